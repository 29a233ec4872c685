"""dynamic: a KV cache that grows by concatenation each step.

Inputs added: per layer ``k_cache_i, v_cache_i`` of ``[B, Hkv, past_len, D]`` (``past_len``
may be 0). Each layer attends over ``cat(past, new)`` (causal aligned to the lower right) and
returns it as the next step's past. Simple and exact, but every step copies the whole cache.
"""

import torch

from export_llm import add_cache_inputs, add_outputs, attention_nodes, finish

aten = torch.ops.aten


def apply(gm, batch_size):
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
