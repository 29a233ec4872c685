"""A product of a few rows (decode steps: 1 to 16 rows) by a quantized weight as one Triton
kernel, ``tllm::dequant_product``: INT4 (two values a byte, a scale and a minimum per group) or
INT8 / FP8 (a scale per output channel), dequantized in registers.

Why: for one row Inductor turns dequantize-then-multiply into a reduction over the packed
weights whose speed varies from one compile to the next (29 to 54 us for Llama-3.1-8B's FP8
gate/up projection, 53 us in 16 bit), and whose INT4 unpacking runs element by element; for 2 to
16 rows it dequantizes the whole weight into memory before a 16-bit GEMM, reading and writing it
twice. Here each program owns a block of output channels and one split of the reduction, reads
each weight byte once, and writes FP32 partial sums; the caller adds the splits.
- One row (``_dequant_row``): CUDA cores, FP32 products. INT8 and INT4 values become floats
  through their bits (2^23's exponent over the integer), not conversion instructions, which
  run at a quarter of the rate of multiply-adds and bound the kernel otherwise.
- 2 to 16 rows (``_dequant_product``): the weight tile, dequantized to 16 bits, is the second
  operand of a tensor-core product with the rows padded to 16.

CUDA only; importing this module needs triton.
"""

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

import quantize
from triton_launch import num_sms, split_reduction

MAX_ROWS = 16  # the rows of one tensor-core tile
MAX_SPLITS = 8  # Inductor unrolls a sum over at most 8 elements into the kernel that reads it
SPLIT_MULTIPLE = 512  # a split's length: a multiple of every reduction tile and INT4 group


@triton.autotune(
    configs=[triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=4, num_stages=3)
             for n in (32, 64, 128) for k in (128, 256, 512)],
    key=["rows", "n", "k", "GROUP"],
)
@triton.jit
def _dequant_product(X, W, Scale, Low, Partial, rows, n, k, x_stride, PER_SPLIT: tl.constexpr, GROUP: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Program (channel block, split): FP32 sums over the split of x[m, :] * W[c, :] for every
    row m, BLOCK_K columns a step. GROUP > 0: INT4 (``quantize.quantize_weight``'s layout);
    0: INT8 or FP8."""
    block, split = tl.program_id(0), tl.program_id(1)
    cols = block * BLOCK_N + tl.arange(0, BLOCK_N)
    m = tl.arange(0, 16)
    row_ok, col_ok = m < rows, cols < n
    dtype = X.dtype.element_ty
    x_rows = X + m[:, None] * x_stride
    acc = tl.zeros((16, BLOCK_N), tl.float32)
    start = split * PER_SPLIT
    if GROUP > 0:
        j = tl.arange(0, GROUP // 2)  # byte j of a group: its columns j (low nibble) and GROUP/2 + j
        STEP: tl.constexpr = max(BLOCK_K, GROUP)  # whole groups a step
        for offset in range(0, PER_SPLIT, STEP):
            for step in tl.static_range(STEP // GROUP):
                first = start + offset + step * GROUP
                k_ok = (first + j) < k
                packed = tl.load(W + cols[None, :] * (k // 2) + (first // 2 + j)[:, None],
                                 mask=k_ok[:, None] & col_ok[None, :], other=0)
                where = (first // GROUP) * n + cols  # scales and minimums are stored group by group
                scale = tl.load(Scale + where, mask=col_ok & (first < k), other=0.0).to(tl.float32)[None, :]
                low = tl.load(Low + where, mask=col_ok & (first < k), other=0.0).to(tl.float32)[None, :]
                # rounded to the activations' type, as ``quantize.dequantize`` rounds
                w_low = ((packed & 15).to(tl.float32) * scale + low).to(dtype)
                w_high = ((packed >> 4).to(tl.float32) * scale + low).to(dtype)
                x_low = tl.load(x_rows + (first + j)[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
                x_high = tl.load(x_rows + (first + GROUP // 2 + j)[None, :], mask=row_ok[:, None] & k_ok[None, :],
                                 other=0.0)
                acc += tl.dot(x_low, w_low) + tl.dot(x_high, w_high)
    else:
        for offset in range(0, PER_SPLIT, BLOCK_K):
            kk = start + offset + tl.arange(0, BLOCK_K)
            k_ok = kk < k
            w = tl.load(W + cols[None, :] * k + kk[:, None], mask=k_ok[:, None] & col_ok[None, :], other=0.0)
            x = tl.load(x_rows + kk[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            acc += tl.dot(x, w.to(dtype))
        acc *= tl.load(Scale + cols, mask=col_ok, other=0.0)[None, :]
    tl.store(Partial + (split * rows + m[:, None]) * n + cols[None, :], acc, mask=row_ok[:, None] & col_ok[None, :])


@triton.autotune(
    configs=[triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=1)
             for n in (16, 32) for k in (256, 512, 1024) for w in (4, 8)]
    + [triton.Config({"BLOCK_N": 32, "BLOCK_K": 512}, num_warps=8, num_stages=3)],
    key=["n", "k", "per_split", "GROUP"],
)
@triton.jit
def _dequant_row(X, W, Scale, Low, Partial, n, k, per_split, GROUP: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_K: tl.constexpr):
    """Program (channel block, split): FP32 sums over the split of x[:] * W[c, :] for one row.
    GROUP > 0: INT4 (``quantize.quantize_weight``'s layout); 0: INT8 or FP8."""
    block, split = tl.program_id(0), tl.program_id(1)
    cols = block * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < n
    start = split * per_split
    end = tl.minimum(start + per_split, k)
    if GROUP > 0:
        HALF: tl.constexpr = GROUP // 2
        STEP: tl.constexpr = max(BLOCK_K, GROUP)  # whole groups a step
        j = tl.arange(0, HALF)  # byte j of a group: its columns j (low nibble) and HALF + j (high)
        acc = tl.zeros((BLOCK_N, HALF), tl.float32)
        for offset in range(start, end, STEP):
            for step in tl.static_range(STEP // GROUP):
                first = offset + step * GROUP
                ok = first < end
                packed = tl.load(W + cols[:, None] * (k // 2) + (first // 2 + j)[None, :],
                                 mask=col_ok[:, None] & ok, other=0).to(tl.int32)
                x_low = tl.load(X + first + j, mask=ok, other=0.0).to(tl.float32)
                x_high = tl.load(X + first + HALF + j, mask=ok, other=0.0).to(tl.float32)
                where = (first // GROUP) * n + cols  # scales and minimums are stored group by group
                scale = tl.load(Scale + where, mask=col_ok & ok, other=0.0).to(tl.float32)[:, None]
                low = tl.load(Low + where, mask=col_ok & ok, other=0.0).to(tl.float32)[:, None]
                # 2^23 + q and 2^23 + 16 q, exactly; the high nibble's scale takes the 16 instead
                q_low = ((packed & 0x0F) | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0
                q_high = ((packed & 0xF0) | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0
                acc += (q_low * scale + low) * x_low[None, :] + (q_high * (scale * 0.0625) + low) * x_high[None, :]
        total = tl.sum(acc, 1)
    else:
        acc = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
        for offset in range(start, end, BLOCK_K):
            kk = offset + tl.arange(0, BLOCK_K)
            k_ok = kk < end
            w = tl.load(W + cols[:, None] * k + kk[None, :], mask=col_ok[:, None] & k_ok[None, :], other=0.0)
            if W.dtype.element_ty == tl.int8:  # 2^23 + 128 + q, exactly
                w = ((w.to(tl.uint8, bitcast=True).to(tl.int32) ^ 0x80) | 0x4B000000).to(tl.float32, bitcast=True) \
                    - 8388736.0
            acc += w.to(tl.float32) * tl.load(X + kk, mask=k_ok, other=0.0).to(tl.float32)[None, :]
        total = tl.sum(acc, 1) * tl.load(Scale + cols, mask=col_ok, other=0.0)
    tl.store(Partial + split * n + cols, total, mask=col_ok)


def plan(n, k, rows, num_sms):
    """(reduction length per split, splits): about two programs per SM at 32 channels each (one
    row) or 64 (more), at most MAX_SPLITS."""
    return split_reduction(n, k, num_sms, 32 if rows == 1 else 64, SPLIT_MULTIPLE, MAX_SPLITS)


def applies(kind, group, dtype):
    """Whether the kernel takes this weight: 16-bit activations, and INT4 groups of 32 to 256
    (a power of two: a group is one tensor-core step, and divides a split)."""
    if dtype not in (torch.bfloat16, torch.float16):
        return False
    return kind != "int4" or (32 <= group <= SPLIT_MULTIPLE and group & (group - 1) == 0)


def partial_sums(x, weight, scale, low, group, sms, tile=None):
    """``x`` [rows <= 16, K] (rows contiguous) by the quantized ``weight`` ([N, K/2] INT4 bytes
    with ``scale`` and ``low`` [K/group, N]; or [N, K] INT8 / FP8 with ``scale`` [N]) -> FP32
    partial sums [splits, rows, N]. ``tile``: (BLOCK_N, BLOCK_K) instead of autotuning
    (Triton's CPU interpreter cannot time)."""
    rows, k = x.shape
    n = weight.shape[0]
    per_split, splits = plan(n, k, rows, sms)
    out = torch.empty((splits, rows, n), dtype=torch.float32, device=x.device)
    kernel = _dequant_row if rows == 1 else _dequant_product
    kernel, extra = (kernel, {}) if tile is None else (kernel.fn, dict(zip(("BLOCK_N", "BLOCK_K"), tile)))
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), splits)  # noqa: E731
    low = scale if low is None else low
    if rows == 1:
        wrap_triton(kernel)[grid](x, weight, scale, low, out, n, k, per_split, GROUP=group, **extra)
    else:
        wrap_triton(kernel)[grid](x, weight, scale, low, out, rows, n, k, x.stride(0), PER_SPLIT=per_split,
                                  GROUP=group, **extra)
    return out


@triton_op("tllm::dequant_product", mutates_args=())
def dequant_product(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, low: torch.Tensor | None,
                    group: int) -> torch.Tensor:
    return partial_sums(x, weight, scale, low, group, num_sms(x.device.index or 0))


def quantized_linear(x, weight, scale, extra, bias, kind):
    """``quantize.quantized_linear`` with this kernel for decode steps: what the ``quantize``
    pass puts in a CUDA graph (a build loaded from the cache imports this module, and so the
    op, to resolve it)."""
    return quantize.quantized_linear(x, weight, scale, extra, bias, kind, gemv=True)


quantized_linear.is_product = True  # layer_split: a piece may end after it
