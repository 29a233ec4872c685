"""dynamic: a KV cache that grows by concatenation each step.

Inputs added: per layer ``k_cache_i, v_cache_i`` of ``[B, Hkv, past_len, D]`` (``past_len``
may be 0). Each layer attends over ``cat(past, new)`` (causal aligned to the lower right) and
returns it as the next step's past. Simple and exact, but every step copies the whole cache.
"""

import torch
from torch.export import Dim

from export_llm import add_cache_inputs, add_outputs, attention_nodes, finish, zero_caches

aten = torch.ops.aten
FIXED_SHAPES = False
FIRST_GRAPH = False


def apply(gm, batch_size, max_len, inplace=True, fresh=False):
    nodes = attention_nodes(gm)
    caches = add_cache_inputs(gm, nodes, batch_size, 0)
    grown = []
    for node, pair in zip(nodes, caches):
        q, k, v = node.args[:3]
        with gm.graph.inserting_before(node):
            full = [gm.graph.call_function(aten.cat.default, ([past, new], 2)) for past, new in zip(pair, (k, v))]
        node.args = (q, *full, *node.args[3:])
        grown.extend(full)
    add_outputs(gm, grown)
    gm.meta["cache"] = "dynamic"
    return finish(gm)


def new_state(shapes, batch_size, max_len, dtype, device, kept=None):
    return zero_caches(shapes, batch_size, 0, dtype, device)


def call(graph, inputs, state, start, cache_position):
    logits, token, *grown = graph(*inputs, *state)
    return logits, token, grown


def tensorrt_shapes(num_inputs, seq, max_len):
    past = Dim("past", min=0, max=max_len)
    return [{2: past}] * num_inputs
