"""A split-K/V ("flash-decoding") Triton kernel for one new token attending over a static KV
cache, exposed as two ops over the same kernels: ``tllm::decode_attention`` (a
``torch.library.triton_op``: Inductor sees the kernels and launches them from its own generated
code, the fastest path from the host) and ``tllm::decode_attention_pdl`` (opaque: it launches
them itself with programmatic dependent launch, for steps replayed as CUDA graphs).

Why: with one query row per head, SDPA's kernels run one thread block per K/V head and walk
the whole buffer serially, so a decode step over 2048 cached keys keeps 2-8 of the H100's 132
SMs busy. Here the keys are cut into splits that run in parallel; each split keeps an online
softmax for the G query heads that share its K/V head (read once, not repeated per query
head), and a second small kernel merges the splits. Short caches use one split and no merge.

CUDA only; importing this module needs triton. ``use_split_k_decode`` is the graph rewrite that
uses it (``passes`` decides when).
"""

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from triton_launch import has_pdl, launch, num_sms

# Each split walks at least this many keys (two 64-key tiles). Measured over the supported
# models' head shapes (benchmarks/decode_attention_bench.py), 128 beat 256 and 512 at 2176 keys
# and was even or better at 256 keys.
MIN_KEYS_PER_SPLIT = 128
LOG2E = 1.4426950408889634


@triton.jit
def _attend_split(Q, K, V, Position, KeyStart, Out, Acc, Max, Sum,
                  q_sb, q_sh, k_sb, k_sh, k_sn, v_sb, v_sh, v_sn, o_sb, o_sh,
                  keys_per_split,
                  QK_SCALE: tl.constexpr, WINDOW: tl.constexpr, HKV: tl.constexpr, GROUP: tl.constexpr,
                  GROUP_PAD: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr, BLOCK_N: tl.constexpr,
                  SINGLE: tl.constexpr, PDL: tl.constexpr, PADDED: tl.constexpr):
    """One (batch row, K/V head, split): online softmax over the split's visible keys for the
    GROUP query heads of that K/V head. The new token sits at ``Position``; key j is visible iff
    position - WINDOW < j <= position (no lower bound when WINDOW is 0), so the loop walks only
    the visible tiles of the split (none, for a split past the position). In a left-padded
    batch (PADDED) row b's keys start at KeyStart[b]. Scores are in log2
    units (QK_SCALE includes log2(e)). The scale is a compile-time constant: passed as an
    argument, it reached the kernel as float64 when Inductor launched it, which made the
    softmax state float64 and failed to compile."""
    if PDL:  # launched before the kernel that wrote q and the new cache row has finished (triton_launch)
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    bh = tl.program_id(0)
    split = tl.program_id(1)
    b = bh // HKV
    h = bh % HKV
    g = tl.arange(0, GROUP_PAD)
    d = tl.arange(0, D_PAD)
    rows_ok = (g < GROUP)[:, None] & (d < D)[None, :]
    heads = h * GROUP + g
    q = tl.load(Q + b * q_sb + heads[:, None] * q_sh + d[None, :], mask=rows_ok, other=0.0)
    position = tl.load(Position)
    start = split * keys_per_split
    end = tl.minimum(start + keys_per_split, position + 1)
    first_key = 0
    if WINDOW > 0:
        first_key = position - WINDOW + 1
    if PADDED:  # (a pad position, before its row's first key, sees itself: no 0/0)
        first_key = tl.minimum(tl.maximum(first_key, tl.load(KeyStart + b)), position)
    # skip whole tiles before the first visible key (truncating division: start wins when negative)
    start = tl.maximum(start, first_key // BLOCK_N * BLOCK_N)
    m = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    total = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, D_PAD], tl.float32)
    k_base = K + b * k_sb + h * k_sh
    v_base = V + b * v_sb + h * v_sh
    for first in range(start, end, BLOCK_N):
        n = first + tl.arange(0, BLOCK_N)
        visible = (n < end) & (n >= first_key)
        tile_ok = visible[:, None] & (d < D)[None, :]
        k = tl.load(k_base + n[:, None] * k_sn + d[None, :], mask=tile_ok, other=0.0)
        s = tl.dot(q, tl.trans(k)) * QK_SCALE
        s = tl.where(visible[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        # A row that has seen no visible key yet keeps m = -inf; shift by 0 so exp2 gives 0, not NaN.
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - shift[:, None])
        alpha = tl.exp2(m - shift)
        total = total * alpha + tl.sum(p, 1)
        v = tl.load(v_base + n[:, None] * v_sn + d[None, :], mask=tile_ok, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m = m_new
    if SINGLE:
        out = acc / total[:, None]
        tl.store(Out + b * o_sb + heads[:, None] * o_sh + d[None, :], out.to(Out.dtype.element_ty), mask=rows_ok)
    else:
        row = (bh * tl.num_programs(1) + split) * GROUP + g
        tl.store(Acc + row[:, None] * D + d[None, :], acc, mask=rows_ok)
        tl.store(Max + row, m, mask=g < GROUP)
        tl.store(Sum + row, total, mask=g < GROUP)


@triton.jit
def _merge_splits(Acc, Max, Sum, Out, o_sb, o_sh, num_splits,
                  HQ: tl.constexpr, GROUP: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr,
                  SPLITS_PAD: tl.constexpr, PDL: tl.constexpr):
    """One (batch row, query head): weight each split's partial sums by exp2(its max - the max)."""
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    bq = tl.program_id(0)
    b = bq // HQ
    hq = bq % HQ
    s = tl.arange(0, SPLITS_PAD)
    d = tl.arange(0, D_PAD)
    splits_ok = s < num_splits
    row = ((b * (HQ // GROUP) + hq // GROUP) * num_splits + s) * GROUP + hq % GROUP
    m = tl.load(Max + row, mask=splits_ok, other=float("-inf"))
    total = tl.load(Sum + row, mask=splits_ok, other=0.0)
    acc = tl.load(Acc + row[:, None] * D + d[None, :], mask=splits_ok[:, None] & (d < D)[None, :], other=0.0)
    weight = tl.exp2(m - tl.max(m, 0))  # a split with no visible key has m = -inf: weight 0
    out = tl.sum(acc * weight[:, None], 0) / tl.sum(total * weight, 0)
    tl.store(Out + b * o_sb + hq * o_sh + d, out.to(Out.dtype.element_ty), mask=d < D)


def plan(batch, kv_heads, num_keys, head_dim, num_sms, min_keys_per_split=MIN_KEYS_PER_SPLIT):
    """(keys per tile, keys per split, splits): enough splits to fill the GPU once, none
    shorter than ``min_keys_per_split``."""
    block_n = 64 if head_dim <= 128 else 32  # a 256-wide head halves the tile to stay in registers
    wanted = triton.cdiv(num_sms, batch * kv_heads)
    per_split = min(max(min_keys_per_split, triton.cdiv(num_keys, wanted)), num_keys)
    per_split = triton.cdiv(per_split, block_n) * block_n
    return block_n, per_split, triton.cdiv(num_keys, per_split)


def attend(q, k_cache, v_cache, position, scale, window, min_keys_per_split=MIN_KEYS_PER_SPLIT, pdl=False,
           key_start=None):
    """q ``[B, Hq, 1, D]``, caches ``[B, Hkv, L, D]``, the new token's position (int64 ``[1]``,
    on the device) and sliding window (0: none) -> ``[B, 1, Hq, D]``, the layout the output
    projection reads. ``key_start`` (int64 ``[B]``): each row's first key, in a left-padded
    batch."""
    batch, q_heads, _, head_dim = q.shape
    kv_heads, num_keys = k_cache.shape[1], k_cache.shape[2]
    group = q_heads // kv_heads
    d_pad = max(16, triton.next_power_of_2(head_dim))
    block_n, per_split, splits = plan(batch, kv_heads, num_keys, head_dim, num_sms(q.device.index or 0),
                                      min_keys_per_split)
    out = torch.empty((batch, 1, q_heads, head_dim), dtype=q.dtype, device=q.device)
    if splits == 1:
        acc = row_max = row_sum = out  # unused by the single-split kernel
    else:
        rows = batch * kv_heads * splits * group  # one per (batch row, K/V head, split, query head of the group)
        acc = torch.empty((rows, head_dim), dtype=torch.float32, device=q.device)
        row_max = torch.empty((rows,), dtype=torch.float32, device=q.device)
        row_sum = torch.empty_like(row_max)
    launch(
        _attend_split, (batch * kv_heads, splits), pdl,
        q, k_cache, v_cache, position, position if key_start is None else key_start, out, acc, row_max, row_sum,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), out.stride(0), out.stride(2),
        per_split,
        QK_SCALE=scale * LOG2E, WINDOW=window, HKV=kv_heads, GROUP=group,
        GROUP_PAD=max(16, triton.next_power_of_2(group)),
        D=head_dim, D_PAD=d_pad, BLOCK_N=block_n, SINGLE=splits == 1, PADDED=key_start is not None,
    )
    if splits > 1:
        launch(
            _merge_splits, (batch * q_heads,), pdl,
            acc, row_max, row_sum, out, out.stride(0), out.stride(2), splits,
            HQ=q_heads, GROUP=group, D=head_dim, D_PAD=d_pad, SPLITS_PAD=triton.next_power_of_2(splits),
        )
    return out


@triton_op("tllm::decode_attention", mutates_args=())
def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, position: torch.Tensor,
                     scale: float, window: int, key_start: torch.Tensor | None = None) -> torch.Tensor:
    return attend(q, k_cache, v_cache, position, scale, window, key_start=key_start)


# Launched from Python, each call costs far more host time than Inductor's launch of the
# triton_op (benchmarks/HISTORY.md, af9d8f1); a CUDA graph pays it once, at capture.
@torch.library.custom_op("tllm::decode_attention_pdl", mutates_args=())
def decode_attention_pdl(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, position: torch.Tensor,
                         scale: float, window: int, key_start: torch.Tensor | None = None) -> torch.Tensor:
    return attend(q, k_cache, v_cache, position, scale, window, pdl=has_pdl(q.device.index or 0), key_start=key_start)


@decode_attention_pdl.register_fake
def _decode_attention_pdl_fake(q, k_cache, v_cache, position, scale, window, key_start=None):
    batch, q_heads, _, head_dim = q.shape
    return q.new_empty((batch, 1, q_heads, head_dim))


def split_k_cached_attention(q, k_cache, v_cache, mask, scale, position, window, pdl=False, key_start=None):
    """``cached_attention``, with one-token steps on the split-K Triton kernel, which takes the
    token's position and window instead of the mask (so no step builds a mask it does not
    read). A plain function in the graph: Dynamo inlines it, so each compiled step length gets
    its own choice."""
    if q.shape[2] == 1 and q.stride(-1) == 1 and q.shape[-1] == v_cache.shape[-1]:
        op = torch.ops.tllm.decode_attention_pdl if pdl else torch.ops.tllm.decode_attention
        return op(q, k_cache, v_cache, position, scale, window, key_start)
    return torch.ops.tllm.cached_attention(q, k_cache, v_cache, mask, scale)


def use_split_k_decode(gm, pdl=False):
    """Point the ``cached_attention`` nodes of a static_v2 graph that will run on CUDA (with
    triton installed) at ``split_k_cached_attention``; ``pdl`` for a graph whose steps are
    replayed as CUDA graphs (``triton_launch.launch``). A rewrite of the graph rather than a
    switch inside the op, so that compilers' caches, keyed by the graph, keep the two kernels
    apart. Returns how many nodes it changed."""
    nodes = [n for n in gm.graph.nodes if n.target == torch.ops.tllm.cached_attention.default]
    if not nodes:
        return 0
    inputs = {n.target: n for n in gm.graph.nodes if n.op == "placeholder"}
    for node in nodes:
        node.target = split_k_cached_attention
        node.args = (*node.args, inputs["cache_position"], node.meta["window"], pdl, inputs.get("key_start"))
    gm.recompile()
    return len(nodes)
