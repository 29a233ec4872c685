"""One attention op per layer.

Models are loaded with ``attn_implementation=ATTN_IMPLEMENTATION``: transformers then calls
``tllm::attention`` once per layer with K/V *not* repeated for GQA, and builds no mask (the op
owns its masking). After export the graph holds exactly one such node per layer, which the
cache passes (static_cache_v1/v2, dynamic_cache) find and rewrite.

Two ops, both taking q, k, v as ``[B, H, S, D]`` and returning ``[B, Sq, Hq, D]``, the layout
the output projection reads: flash and cuDNN attention write that layout already, so neither
the op nor the model copies the result (benchmarks/HISTORY.md, ab2c29a).
- ``tllm::attention(q, k, v, scale, window)``: causal aligned to the lower right (query i of
  Sq sits at absolute position Sk - Sq + i), optional sliding window. Used with no cache, with
  a concatenated cache, and over a prefix-sliced static cache.
- ``tllm::cached_attention(q, k_cache, v_cache, mask, scale)``: attends over a whole
  fixed-size cache buffer with a boolean ``[Sq, max_len]`` mask (``[B, Sq, max_len]`` in a
  left-padded batch, where ``padding`` also points every ``tllm::attention`` here) that the static_v2 pass builds
  once per distinct window from the queries' absolute positions. Fixed shapes for every decode
  step, so it can be captured in a CUDA graph. ``decode_attention.use_split_k_decode`` points
  these nodes at its split-K Triton kernel for one-token steps on CUDA.
Their TensorRT converters are in ``tensorrt_backend``.
"""

import torch
import torch.nn.functional as F
import transformers
from transformers.masking_utils import AttentionMaskInterface

ATTN_IMPLEMENTATION = "tllm_attention"


def visible_keys(q_pos: torch.Tensor, num_keys: int, window: int) -> torch.Tensor:
    """Boolean [Sq, Sk] mask: key j is visible from position p iff p - window < j <= p."""
    k_pos = torch.arange(num_keys, device=q_pos.device)
    visible = k_pos[None, :] <= q_pos[:, None]
    if window > 0:
        visible = visible & (k_pos[None, :] > q_pos[:, None] - window)
    return visible


def _masked_gqa_sdpa(q, k, v, mask, scale):
    """SDPA with a mask and grouped K/V heads, without repeating K/V.

    The G query heads that share a K/V head are folded into the query length, so the kernel
    sees Hkv heads of G*Sq queries and reads each cached K/V row once. (``enable_gqa`` with a
    mask falls back to the math kernel on CUDA, which copies the repeated cache every step.)
    """
    b, hq, sq, d = q.shape
    hkv = k.shape[1]
    group = hq // hkv
    q = q.reshape(b, hkv, group * sq, d)
    # [Sq, Sk] for every row, or [B, Sq, Sk] per row (a left-padded batch: padding.py)
    mask = mask.repeat(group, 1) if mask.dim() == 2 else mask.repeat(1, group, 1)[:, None]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return out.reshape(b, hq, sq, v.shape[-1])


@torch.library.custom_op("tllm::attention", mutates_args=())
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, window: int) -> torch.Tensor:
    return _sequence_major(_attention(q, k, v, scale, window))


def _sequence_major(out):
    """``[B, H, S, D]`` -> contiguous ``[B, S, H, D]`` (free where the kernel wrote it that way)."""
    return out.transpose(1, 2).contiguous()


def _attention(q, k, v, scale, window):
    sq, sk = q.shape[2], k.shape[2]
    gqa = q.shape[1] != k.shape[1]
    if window <= 0 or sk <= window:
        if sq == sk:  # plain causal prefill: lets SDPA pick its flash kernel
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
        if sq == 1:  # one new token sees every key
            return F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=gqa)
    q_pos = torch.arange(sk - sq, sk, device=q.device)
    return _masked_gqa_sdpa(q, k, v, visible_keys(q_pos, sk, window), scale)


@attention.register_fake
def _attention_fake(q, k, v, scale, window):
    return _output_like(q, v)


def _output_like(q, v):
    b, h, s, _ = q.shape
    return q.new_empty((b, s, h, v.shape[-1]))


@torch.library.custom_op("tllm::cached_attention", mutates_args=())
def cached_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, mask: torch.Tensor, scale: float
) -> torch.Tensor:
    return _cached_attention(q, k_cache, v_cache, mask, scale)


def _cached_attention(q, k_cache, v_cache, mask, scale):
    """The op's body, also what Inductor traces through (``register_inductor_decompositions``)."""
    return _sequence_major(_masked_gqa_sdpa(q, k_cache, v_cache, mask, scale))


@cached_attention.register_fake
def _cached_attention_fake(q, k_cache, v_cache, mask, scale):
    return _output_like(q, v_cache)


def register_inductor_decompositions():
    """Let Inductor see through the decode op (it cannot fuse into an opaque op): each mask's
    per-group repeat then fuses with the mask itself, once for all layers that share it."""
    from torch._inductor.decomposition import decompositions

    decompositions[torch.ops.tllm.cached_attention.default] = _cached_attention


def _transformers_attention(module, query, key, value, attention_mask, scaling=None, sliding_window=None, **kwargs):
    """The function transformers calls per layer; returns [B, S, H, D] like its own SDPA path."""
    scale = float(scaling) if scaling is not None else query.shape[-1] ** -0.5
    return torch.ops.tllm.attention(query, key, value, scale, int(sliding_window or 0)), None


def _no_mask(*args, **kwargs):
    return None


transformers.AttentionInterface.register(ATTN_IMPLEMENTATION, _transformers_attention)
AttentionMaskInterface.register(ATTN_IMPLEMENTATION, _no_mask)
