"""static_v1: a fixed-size KV cache that flows through the graph functionally.

Inputs added: per layer ``k_cache_i, v_cache_i`` of ``[B, Hkv, max_len, D]``, then the int
``start_idx`` (tokens already cached). Each layer writes its new rows with ``slice_scatter``
and attends over the prefix ``[:start_idx + S]``; the whole updated caches are returned as
outputs, to be passed back in at the next step (the original tool's semantics).
"""

import operator

import torch
from torch.export import Dim

from export_llm import add_cache_inputs, add_input, add_outputs, attention_nodes, finish, zero_caches

aten = torch.ops.aten
FIXED_SHAPES = False
FIRST_GRAPH = False


def apply(gm, batch_size, max_len, inplace=True, fresh=False):
    nodes = attention_nodes(gm)
    caches = add_cache_inputs(gm, nodes, batch_size, max_len)
    start = add_input(gm, "start_idx", 0)
    updated = []
    for node, pair in zip(nodes, caches):
        q, k, v = node.args[:3]
        with gm.graph.inserting_before(node):
            end = gm.graph.call_function(operator.add, (start, gm.graph.call_function(aten.sym_size.int, (k, 2))))
            used = []
            for cache, new in zip(pair, (k, v)):
                full = gm.graph.call_function(aten.slice_scatter.default, (cache, new, 2, start, end))
                used.append(gm.graph.call_function(aten.slice.Tensor, (full, 2, 0, end)))
                updated.append(full)
        node.args = (q, *used, *node.args[3:])
    add_outputs(gm, updated)
    gm.meta["cache"] = "static_v1"
    return finish(gm)


def new_state(shapes, batch_size, max_len, dtype, device, kept=None):
    return kept or zero_caches(shapes, batch_size, max_len, dtype, device)


def call(graph, inputs, state, start, cache_position):
    logits, token, *updated = graph(*inputs, *state, start)
    return logits, token, updated


def tensorrt_shapes(num_inputs, seq, max_len):
    return [None] * (num_inputs - 1) + [Dim.DYNAMIC]  # the caches, then start_idx
