"""torch.export of a language model into a flat FX graph with one ``tllm::attention`` node per
layer, and the small graph helpers the cache passes share.

The graph's calling convention is positional: ``graph(*model_inputs, *row_inputs,
*cache_inputs)`` returns a tuple (row inputs: per-row settings such as padding or sampling, named
in ``gm.meta["row_inputs"]``). For a language model, after ``add_next_token``, that is ``(logits, next_token,
*cache_outputs)``: float32 logits of the last position ``[B, V]`` and their argmax ``[B]``, the
greedy next token. Each pass adds its inputs after the model's and its outputs after these two,
and records what it added in ``gm.meta``.
"""

import torch
from torch import nn
from torch.export import Dim
from torch.fx.graph import CodeGen

import register_sdpa  # noqa: F401  (registers the ops the graph calls)

ATTENTION = torch.ops.tllm.attention.default
aten = torch.ops.aten


class LastLogits(nn.Module):
    """Causal LM -> logits of the last position only (prefill never pays for full-vocab logits).
    ``inputs``: what the first argument is, ``input_ids`` or ``inputs_embeds``."""

    def __init__(self, lm, inputs="input_ids"):
        super().__init__()
        self.lm, self.inputs = lm, inputs

    def forward(self, x, position_ids):
        return self.lm(**{self.inputs: x}, position_ids=position_ids, use_cache=False, logits_to_keep=1).logits


def export_graph(module, example_inputs, seq_dims, max_seq_len):
    """Export with a dynamic sequence length; ``seq_dims[i]`` is the sequence dim of input i.

    The example inputs must have a sequence length of at least 2 (export specialises 0/1);
    the graph still runs at length 1.
    """
    seq = Dim("seq", min=1, max=max_seq_len)
    dynamic_shapes = tuple({d: seq} for d in seq_dims)
    with torch.no_grad():
        ep = torch.export.export(module, tuple(example_inputs), dynamic_shapes=dynamic_shapes, strict=False)
    unlifted = ep.module()
    # Drop the input-guard call and the pytree calling convention: passes add positional inputs
    # and outputs, and each backend checks shapes itself.
    for node in list(unlifted.graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn":
            unlifted.graph.erase_node(node)
    unlifted.graph._codegen = CodeGen()
    # A plain GraphModule over the same weights, without what export adds for its own calling
    # convention (an input-spec check, hooks, train/eval that refuse): it pickles (build_cache).
    gm = torch.fx.GraphModule(unlifted, unlifted.graph)
    gm.meta.update(unlifted.meta)
    gm.meta["seq_dims"] = tuple(seq_dims)
    gm.meta["cache"] = ""
    return finish(gm)


def add_next_token(gm):
    """For a language model's graph, whose first output is the last position's logits
    ``[B, 1, V]``: output them as float32 ``[B, V]`` (the compiler fuses the cast into the LM
    head) and their argmax, the greedy next token, so that a decode step needs nothing after
    the graph."""
    out = next(n for n in gm.graph.nodes if n.op == "output")
    logits, *rest = out.args[0]
    call = gm.graph.call_function
    with gm.graph.inserting_before(out):
        last = call(aten._to_copy.default, (call(aten.select.int, (logits, 1, -1)),), {"dtype": torch.float32})
        token = call(argmax_in_slices, (last,))
    out.args = ((last, token, *rest),)
    return finish(gm)


def argmax_in_slices(x, slices=128):
    """``x.argmax(-1)`` of ``x [B, N]`` as two reductions: the max of each of ``slices`` slices
    (padded with -inf), then the best slice. One argmax over a whole vocabulary runs in a single
    thread block per row, an order of magnitude slower than the two reductions
    (benchmarks/HISTORY.md, 952492c). Ties go to the first index, as with argmax: the first
    slice holding the max, then its first max."""
    x = torch.nn.functional.pad(x, (0, -x.shape[-1] % slices), value=float("-inf"))
    values, where = x.view(x.shape[0], slices, -1).max(-1)
    best = values.argmax(-1)
    return best * (x.shape[-1] // slices) + where.gather(1, best[:, None])[:, 0]


def attention_nodes(gm):
    return [n for n in gm.graph.nodes if n.target is ATTENTION]


def add_input(gm, name, example):
    """Append a placeholder after the existing ones; ``example`` fills its meta (shape, dtype)."""
    last = [n for n in gm.graph.nodes if n.op == "placeholder"][-1]
    with gm.graph.inserting_after(last):
        node = gm.graph.placeholder(name)
    node.meta["val"] = example
    return node


def add_row_input(gm, name, example):
    """A per-row input (``[B]``: padding, sampling settings) placed after the model's inputs and
    the row inputs added before it, whatever a cache pass added since: the calling convention
    stays ``graph(*model_inputs, *row_inputs, *cache_inputs)``."""
    rows = gm.meta.get("row_inputs", ())
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    with gm.graph.inserting_after(placeholders[len(gm.meta["seq_dims"]) + len(rows) - 1]):
        node = gm.graph.placeholder(name)
    node.meta["val"] = example
    gm.meta["row_inputs"] = (*rows, name)  # a new tuple: the first-prefill graph's copy shares the dict's values
    return node


def add_outputs(gm, nodes):
    out = next(n for n in gm.graph.nodes if n.op == "output")
    out.args = (tuple(out.args[0]) + tuple(nodes),)


def add_cache_inputs(gm, nodes, batch_size, length):
    """Per attention node, placeholders ``k_cache_i, v_cache_i`` shaped like its K/V (heads not
    repeated) with ``length`` positions. Returns [(k_cache, v_cache)] and records the shapes."""
    caches, shapes = [], []
    for i, node in enumerate(nodes):
        pair = []
        for name, new in zip("kv", node.args[1:3]):
            val = new.meta["val"]
            shape = (batch_size, val.shape[1], length, val.shape[3])
            pair.append(add_input(gm, f"{name}_cache_{i}", torch.empty(shape, dtype=val.dtype, device="meta")))
            shapes.append(shape[1:2] + shape[3:])
        caches.append(tuple(pair))
    gm.meta["cache_shapes"] = shapes  # (kv_heads, head_dim) of k0, v0, k1, v1, ...
    return caches


def zero_caches(shapes, batch_size, length, dtype, device):
    """Zeroed K/V buffers ``[B, heads, length, dim]`` for ``gm.meta["cache_shapes"]``."""
    return [torch.zeros((batch_size, heads, length, dim), dtype=dtype, device=device) for heads, dim in shapes]


def attribute(gm, target):
    """The attribute a ``get_attr`` node's dotted ``target`` names."""
    value = gm
    for part in target.split("."):
        value = getattr(value, part)
    return value


def finish(gm):
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    return gm
