"""Prompts of different lengths in one batch: left padding, carried into attention.

Row b starts with ``key_start[b]`` pad tokens, so its cache slots below ``key_start[b]`` hold
padding its queries must not see. The caller gives its positions as slot - key_start[b], so
the rotary embedding sees each prompt as if it were alone; with both, a row's tokens are the
ones its prompt gives alone. The pass adds the int64 input ``key_start`` ``[B]`` (a row input:
``export_llm.add_row_input``) and
- ANDs each static_v2 position mask ``[S, max_len]`` with the row's real slots, giving
  ``[B, S, max_len]`` (the split-K decode kernel reads ``key_start`` itself instead);
- points every ``tllm::attention`` (static_v2's first prefill, static_v1, dynamic, no cache) at
  ``tllm::cached_attention`` with a causal, windowed and padded mask ``[B, Sq, Sk]`` of its keys.
A pad query sees itself only: a row with no visible key would be NaN, and a NaN in a pad row's
K/V could still reach real rows through the product with a zero weight.
"""

import torch

from export_llm import ATTENTION, add_row_input, finish

CACHED_ATTENTION = torch.ops.tllm.cached_attention.default


def padded_mask(mask, cache_position, key_start):
    """A static_v2 position mask ``[S, L]`` for each row: slots before the row's prompt hidden,
    except a pad position's own."""
    slots = torch.arange(mask.shape[-1], device=mask.device)
    own = slots[None, :] == cache_position[:, None]
    return mask[None] & ((slots >= key_start[:, None])[:, None, :] | own[None])


def attention_mask(q, k, key_start, window):
    """``[B, Sq, Sk]``: query i of Sq sits at slot Sk - Sq + i (lower-right causal, as
    ``tllm::attention``); key j is visible iff slot - window < j <= slot and j is the row's."""
    num_queries, num_keys = q.shape[2], k.shape[2]
    slots = torch.arange(num_keys, device=q.device)
    distance = (slots[num_keys - num_queries:, None] - slots[None, :])
    causal = distance >= 0
    if window > 0:
        causal = causal & (distance < window)
    return causal[None] & ((slots >= key_start[:, None])[:, None, :] | (distance == 0)[None])


def apply(gm, batch_size):
    """The rewrite; returns how many attention nodes now see the padding."""
    key_start = add_row_input(gm, "key_start", torch.empty((batch_size,), dtype=torch.int64, device="meta"))
    count = 0
    masks = {}
    for node in list(gm.graph.nodes):
        if node.target is CACHED_ATTENTION:
            mask = node.args[3]
            if mask not in masks:
                position = next(n for n in gm.graph.nodes if n.op == "placeholder" and n.target == "cache_position")
                with gm.graph.inserting_after(mask):
                    masks[mask] = gm.graph.call_function(padded_mask, (mask, position, key_start))
            node.args = (*node.args[:3], masks[mask], node.args[4])
        elif node.target is ATTENTION:
            q, k, v, scale, window = node.args
            with gm.graph.inserting_before(node):
                mask = gm.graph.call_function(attention_mask, (q, k, key_start, window))
            node.target = CACHED_ATTENTION
            node.args = (q, k, v, mask, scale)
        else:
            continue
        count += 1
    finish(gm)
    return count
