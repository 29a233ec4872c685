"""The sampler's candidates, the largest values of each row of ``x [B, V]``, as two Triton
kernels, ``tllm::top_candidates``: the largest of each slice (in the slices of
``sampling.plan``, one program a slice, sorted in registers), then the rank of each of those
among all of them, counted in parallel (Triton's sort of 4096 keys in one program was slower
than ``torch.sort``), which says where the best ``count`` are written. It gives what
``sampling.candidates`` gives, up to the order of equal values; ``sample`` is
``sampling.sample`` with these kernels.

Why: the same steps through ``torch.sort`` took 50.6 us of a 0.8 ms decode step on an H200
(benchmarks/sampler_bench.py), most of the sampler's cost over greedy decoding.

Each value travels with its index as one int64 sort key: the float's bits made to order as
signed integers in the high half, ``2^32 - 1 - index`` in the low half, so equal values keep
the lower index first (as ``argmax`` does), one sort moves both and no two keys are equal.

CUDA only; importing this module needs triton.
"""

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

import sampling

# The rank kernel's tile: RANK_BLOCK keys a program, RANK_CHUNK others a step. Of the tiles tried
# (benchmarks/results/h200-2026-12-02-candidates/call2), 16 x 256: 11.5 us for one row, 47 for 8.
RANK_BLOCK, RANK_CHUNK = 16, 256


@triton.jit
def _key(x, index):
    bits = x.to(tl.int32, bitcast=True)
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # negative floats: the magnitude's order reversed
    return (ordered.to(tl.int64) << 32) | (4294967295 - index.to(tl.int64))


@triton.jit
def _slice_top(X, Keys, vocab, x_stride, WIDTH: tl.constexpr, KEEP: tl.constexpr):
    """Program (slice, row): the KEEP largest keys of x[row, slice * WIDTH:][:WIDTH] (past the
    vocabulary: -inf), sorted."""
    s, b, slices = tl.program_id(0), tl.program_id(1), tl.num_programs(0)
    index = s * WIDTH + tl.arange(0, WIDTH)
    x = tl.load(X + b * x_stride + index, mask=index < vocab, other=float("-inf")).to(tl.float32)
    best = tl.topk(_key(x, index), KEEP)
    tl.store(Keys + (b * slices + s) * KEEP + tl.arange(0, KEEP), best)


@triton.jit
def _ranked(Keys, Values, Ids, n_keys, COUNT: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    """Program (key block, row): each key's rank among the row's n_keys (how many are larger;
    keys are distinct), and where it is under COUNT, its value and index at that rank."""
    block, b = tl.program_id(0), tl.program_id(1)
    at = block * BLOCK + tl.arange(0, BLOCK)
    mine = tl.load(Keys + b * n_keys + at, mask=at < n_keys, other=0)
    rank = tl.zeros((BLOCK,), tl.int32)
    for start in range(0, n_keys, CHUNK):
        other = start + tl.arange(0, CHUNK)
        theirs = tl.load(Keys + b * n_keys + other, mask=other < n_keys, other=-9223372036854775808)
        rank += tl.sum((theirs[None, :] > mine[:, None]).to(tl.int32), 1)
    ordered = (mine >> 32).to(tl.int32)
    values = (ordered ^ ((ordered >> 31) & 0x7FFFFFFF)).to(tl.float32, bitcast=True)
    keep = (at < n_keys) & (rank < COUNT)
    tl.store(Values + b * COUNT + rank, values, mask=keep)
    tl.store(Ids + b * COUNT + rank, 4294967295 - (mine & 4294967295), mask=keep)


@triton_op("tllm::top_candidates", mutates_args=())
def top_candidates(x: torch.Tensor, per_slice: int, candidates: int) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 ``x [B, V]`` (rows contiguous) -> (values [B, C], indices [B, C]), the C largest
    values of each row sorted from the largest; C = ``sampling.plan(...)[3]``."""
    rows, vocab = x.shape
    x = x.contiguous()
    width, keep, slices, count = sampling.plan(vocab, per_slice, candidates)
    keys = torch.empty((rows, slices * keep), dtype=torch.int64, device=x.device)
    wrap_triton(_slice_top)[(slices, rows)](x, keys, vocab, x.stride(0), WIDTH=width, KEEP=keep,
                                            num_warps=4 if width <= 1024 else 8)
    n_keys = slices * keep
    if count > n_keys:  # fewer values than candidates: -inf at indices past the slices (as sampling.candidates)
        values = torch.full((rows, count), float("-inf"), device=x.device)
        ids = (slices * width - n_keys + torch.arange(count, device=x.device)).expand(rows, -1).contiguous()
    else:
        values = torch.empty((rows, count), dtype=torch.float32, device=x.device)
        ids = torch.empty((rows, count), dtype=torch.int64, device=x.device)
    wrap_triton(_ranked)[(triton.cdiv(n_keys, RANK_BLOCK), rows)](keys, values, ids, n_keys, COUNT=count,
                                                                  BLOCK=RANK_BLOCK, CHUNK=RANK_CHUNK)
    return values, ids


def candidates(x):
    return torch.ops.tllm.top_candidates(x, sampling.PER_SLICE, sampling.CANDIDATES)


def sample(logits, greedy, position_ids, temperature, top_k, top_p, seed):
    """``sampling.sample`` with its candidates from these kernels: the graph's node names this
    module, so a build loaded from the cache imports it (and its op) before it runs."""
    return sampling.sample(logits, greedy, position_ids, temperature, top_k, top_p, seed, candidates)
