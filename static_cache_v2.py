"""static_v2: a fixed-size KV cache with minimal per-step traffic and fixed decode shapes.

Inputs added: ``cache_position`` (int64 ``[S]``, the absolute positions of the new tokens),
then per layer ``k_cache_i, v_cache_i`` of ``[B, Hkv, max_len, D]``. Each layer writes only
its S new rows (``index_copy_``, in place) and attends over the whole buffer through
``tllm::cached_attention``. The mask (key j visible from position p iff p - window < j <= p)
is built once from ``cache_position`` for each distinct window and shared by the layers that
use it, rather than once per layer. Nothing depends on how
many tokens are cached, so a decode step has one shape and can be captured in a CUDA graph,
and a prompt can be fed in chunks.

``inplace=False`` gives the functional form for backends that cannot mutate their inputs
(TensorRT engines): the updated caches are returned as outputs instead.

``fresh=True`` gives the graph for a prompt fed into an empty cache: it writes the rows the
same way but attends over the new K/V only, with the causal op that can use a flash kernel.
Over a whole buffer with a mask, a 2048-token prefill spends twice the attention FLOPs in a
slower kernel.
"""

import torch

from export_llm import add_cache_inputs, add_input, add_outputs, attention_nodes, finish, zero_caches

aten = torch.ops.aten
FIXED_SHAPES = True
FIRST_GRAPH = True


def apply(gm, batch_size, max_len, inplace=True, fresh=False):
    nodes = attention_nodes(gm)
    position = add_input(gm, "cache_position", torch.empty((1,), dtype=torch.int64, device="meta"))
    caches = add_cache_inputs(gm, nodes, batch_size, max_len)
    write = aten.index_copy_.default if inplace else aten.index_copy.default
    device = nodes[0].args[0].meta["val"].device
    masks = {}
    with gm.graph.inserting_before(caches[-1][-1].next):
        for window in [] if fresh else sorted({node.args[4] for node in nodes}, reverse=True):
            masks[window] = _position_mask(gm.graph, position, max_len, window, device)
    updated = []
    for node, pair in zip(nodes, caches):
        q, k, v, scale, window = node.args
        with gm.graph.inserting_before(node):
            # Attention reads the node that wrote the rows, which orders the write before the read.
            full = [gm.graph.call_function(write, (cache, 2, position, new)) for cache, new in zip(pair, (k, v))]
        if not fresh:
            node.target = torch.ops.tllm.cached_attention.default
            node.args = (q, *full, masks[window], scale)
            node.meta["window"] = window  # for decode_attention.use_split_k_decode
        updated.extend(full)
    if not inplace:
        add_outputs(gm, updated)
    gm.meta["cache"] = "static_v2"
    gm.meta["inplace"] = inplace
    gm.meta["fresh"] = fresh
    return finish(gm)


def _position_mask(graph, position, max_len, window, device):
    """Graph nodes for bool ``[S, max_len]``: key j is visible from position p iff
    p - window < j <= p (no lower bound when window is 0). Plain aten ops, so every backend
    (and TensorRT's converters) handles them."""
    call = graph.call_function
    keys = call(aten.arange.start_step, (0, max_len, 1), {"dtype": torch.int64, "device": device})
    rows, columns = call(aten.unsqueeze.default, (position, 1)), call(aten.unsqueeze.default, (keys, 0))
    distance = call(aten.sub.Tensor, (rows, columns))
    mask = call(aten.ge.Scalar, (distance, 0))
    if window > 0:
        mask = call(aten.logical_and.default, (mask, call(aten.lt.Scalar, (distance, window))))
    return mask


def new_state(shapes, batch_size, max_len, dtype, device, kept=None):
    """The buffers are kept from one sequence to the next: rows past the length are never read."""
    return kept or zero_caches(shapes, batch_size, max_len, dtype, device)


def call(graph, inputs, state, start, cache_position):
    logits, token, *updated = graph(*inputs, cache_position, *state)
    return logits, token, updated or state  # the functional form returns the caches it wrote


def tensorrt_shapes(num_inputs, seq, max_len):
    return [{0: seq}] + [None] * (num_inputs - 1)  # cache_position, then the caches
