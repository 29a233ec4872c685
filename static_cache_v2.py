"""static_v2: a fixed-size KV cache with minimal per-step traffic and fixed decode shapes.

Inputs added: ``cache_position`` (int64 ``[S]``, the absolute positions of the new tokens),
then per layer ``k_cache_i, v_cache_i`` of ``[B, Hkv, max_len, D]``. Each layer writes only
its S new rows (``index_copy_``, in place) and attends over the whole buffer through
``tllm::cached_attention``, whose mask comes from ``cache_position``. Nothing depends on how
many tokens are cached, so a decode step has one shape and can be captured in a CUDA graph,
and a prompt can be fed in chunks.

``inplace=False`` gives the functional form for backends that cannot mutate their inputs
(TensorRT engines): the updated caches are returned as outputs instead.
"""

import torch

from export_llm import add_cache_inputs, add_input, add_outputs, attention_nodes, finish

aten = torch.ops.aten


def apply(gm, batch_size, max_len, inplace=True):
    nodes = attention_nodes(gm)
    position = add_input(gm, "cache_position", torch.empty((1,), dtype=torch.int64, device="meta"))
    caches = add_cache_inputs(gm, nodes, batch_size, max_len)
    write = aten.index_copy_.default if inplace else aten.index_copy.default
    updated = []
    for node, pair in zip(nodes, caches):
        q, k, v, scale, window = node.args
        with gm.graph.inserting_before(node):
            # Attention reads the node that wrote the rows, which orders the write before the read.
            full = [gm.graph.call_function(write, (cache, 2, position, new)) for cache, new in zip(pair, (k, v))]
            node.target = torch.ops.tllm.cached_attention.default
            node.args = (q, *full, position, scale, window)
        updated.extend(full)
    if not inplace:
        add_outputs(gm, updated)
    gm.meta["cache"] = "static_v2"
    gm.meta["inplace"] = inplace
    return finish(gm)
