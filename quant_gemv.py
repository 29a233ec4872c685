"""A product of a few rows (decode steps: 1 to 16 rows) by a quantized weight as one Triton
kernel, ``tllm::dequant_product``: INT4 (eight values an int32 word, a scale and a minimum per
group) or INT8 / FP8 (a scale per output channel), dequantized in registers.

Why: for one row Inductor turns dequantize-then-multiply into a reduction over the packed
weights whose speed varies from one compile to the next (29 to 54 us for Llama-3.1-8B's FP8
gate/up projection, 53 us in 16 bit), and whose INT4 unpacking runs element by element; for 2 to
16 rows it dequantizes the whole weight into memory before a 16-bit GEMM, reading and writing it
twice. Here each program owns a block of output channels and one split of the reduction, reads
each weight byte once, and writes FP32 partial sums; the caller adds the splits.
- One row, INT8 / FP8 (``_dequant_row``): CUDA cores, FP32 products. INT8 values become floats
  through their bits (2^23's exponent over the integer), not conversion instructions, which run
  at a quarter of the rate of multiply-adds and bound the kernel otherwise.
- One row, INT4 (``_int4_row``): unpacking, not reading, bounds it, so each value costs three
  instructions: a shift and a mask-and-or put the nibble q under the exponent of 1.0, giving
  the float 1 + q / 16, and a multiply-add by x. Per word and group, sum (q s + low) x =
  16 s sum (1 + q / 16) x + (low - 16 s) sum x. Words are stored [K/8, N], so a thread's four
  neighbouring channels come in one load and share its x values.
- 2 to 16 rows (``_dequant_product``): the weight tile, dequantized to 16 bits, is the second
  operand of a tensor-core product with the rows padded to 16 (INT4: one product per nibble
  position, over the columns it holds).

CUDA only; importing this module needs triton.
"""

import torch
import triton
import triton.language as tl
from torch.library import triton_op

import quantize
from triton_launch import has_pdl, launch, num_sms, split_reduction

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
                     BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr):
    """Program (channel block, split): FP32 sums over the split of x[m, :] * W[c, :] for every
    row m, BLOCK_K columns a step. GROUP > 0: INT4 (``quantize.quantize_weight``'s layout);
    0: INT8 or FP8."""
    if PDL:  # see triton_launch.launch
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    block, split = tl.program_id(0), tl.program_id(1)
    cols = block * BLOCK_N + tl.arange(0, BLOCK_N)
    m = tl.arange(0, 16)
    row_ok, col_ok = m < rows, cols < n
    dtype = X.dtype.element_ty
    x_rows = X + m[:, None] * x_stride
    acc = tl.zeros((16, BLOCK_N), tl.float32)
    start = split * PER_SPLIT
    if GROUP > 0:
        WORDS: tl.constexpr = BLOCK_K // 8  # word r of a channel holds its columns 8 r + t, t = 0..7
        r = tl.arange(0, WORDS)
        for offset in range(0, PER_SPLIT, BLOCK_K):
            first = start + offset + 8 * r  # the first column of each word
            k_ok = first < k
            tile_ok = k_ok[:, None] & col_ok[None, :]
            words = tl.load(W + (first // 8)[:, None] * n + cols[None, :], mask=tile_ok, other=0)
            where = (first // GROUP)[:, None] * n + cols[None, :]  # scales and minimums: [K/group, N]
            scale = tl.load(Scale + where, mask=tile_ok, other=0.0).to(tl.float32)
            low = tl.load(Low + where, mask=tile_ok, other=0.0).to(tl.float32)
            for t in tl.static_range(8):
                # rounded to the activations' type, as ``quantize.dequantize`` rounds
                w = (((words >> 4 * t) & 15).to(tl.float32) * scale + low).to(dtype)
                x = tl.load(x_rows + (first + t)[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
                acc += tl.dot(x, w)
    else:
        for offset in range(0, PER_SPLIT, BLOCK_K):
            kk = start + offset + tl.arange(0, BLOCK_K)
            k_ok = kk < k
            w = tl.load(W + cols[None, :] * k + kk[:, None], mask=k_ok[:, None] & col_ok[None, :], other=0.0)
            x = tl.load(x_rows + kk[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            acc += tl.dot(x, w.to(dtype))
        acc *= tl.load(Scale + cols, mask=col_ok, other=0.0)[None, :]
    tl.store(Partial + (split * rows + m[:, None]) * n + cols[None, :], acc, mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _row_program(n, k, per_split, BLOCK_N: tl.constexpr, PDL: tl.constexpr):
    """A one-row program's split, channels (and which exist) and columns [start, end)."""
    if PDL:  # see triton_launch.launch
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    block, split = tl.program_id(0), tl.program_id(1)
    cols = block * BLOCK_N + tl.arange(0, BLOCK_N)
    start = split * per_split
    return split, cols, cols < n, start, tl.minimum(start + per_split, k)


@triton.autotune(
    configs=[triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=1)
             for n in (16, 32) for k in (256, 512, 1024) for w in (4, 8)]
    + [triton.Config({"BLOCK_N": 32, "BLOCK_K": 512}, num_warps=8, num_stages=3)],
    key=["n", "k", "per_split"],
)
@triton.jit
def _dequant_row(X, W, Scale, Partial, n, k, per_split, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 PDL: tl.constexpr):
    """Program (channel block, split): FP32 sums over the split of x[:] * W[c, :] for one row,
    INT8 or FP8 weights."""
    split, cols, col_ok, start, end = _row_program(n, k, per_split, BLOCK_N, PDL)
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


@triton.autotune(
    configs=[triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=1)
             for n in (128, 256) for k in (128, 256) for w in (2, 4)],
    key=["n", "k", "per_split", "GROUP"],
)
@triton.jit
def _int4_row(X, W, Scale, Low, Partial, n, k, per_split, GROUP: tl.constexpr, BLOCK_N: tl.constexpr,
              BLOCK_K: tl.constexpr, PDL: tl.constexpr):
    """Program (channel block, split): FP32 sums over the split of x[:] * W[c, :] for one row,
    INT4 weights (``quantize.quantize_weight``'s layout), whole groups a step."""
    split, cols, col_ok, start, end = _row_program(n, k, per_split, BLOCK_N, PDL)
    WORDS: tl.constexpr = GROUP // 8  # of a channel's group; word r holds the group's columns 8 r + t
    r = tl.arange(0, WORDS)
    STEP: tl.constexpr = max(BLOCK_K, GROUP)
    acc = tl.zeros((WORDS, BLOCK_N), tl.float32)
    for offset in range(start, end, STEP):
        for step in tl.static_range(STEP // GROUP):
            first = offset + step * GROUP
            ok = first < end
            words = tl.load(W + (first // 8 + r)[:, None] * n + cols[None, :], mask=col_ok[None, :] & ok, other=0)
            dots = tl.zeros((WORDS, BLOCK_N), tl.float32)  # sum (1 + q / 16) x over each word's columns
            x_sums = tl.zeros((WORDS,), tl.float32)
            for t in tl.static_range(8):
                x = tl.load(X + first + 8 * r + t, mask=ok, other=0.0).to(tl.float32)
                bits = words << (19 - 4 * t) if t < 5 else words >> (4 * t - 19)  # bits 4t.. to 19..22
                dots += ((bits & 0x00780000) | 0x3F800000).to(tl.float32, bitcast=True) * x[:, None]
                x_sums += x
            where = (first // GROUP) * n + cols  # scales and minimums: [K/group, N]
            scale16 = tl.load(Scale + where, mask=col_ok & ok, other=0.0).to(tl.float32) * 16.0
            low = tl.load(Low + where, mask=col_ok & ok, other=0.0).to(tl.float32)
            acc += scale16[None, :] * dots + (low - scale16)[None, :] * x_sums[:, None]
    tl.store(Partial + split * n + cols, tl.sum(acc, 0), mask=col_ok)


def plan(n, k, rows, group, num_sms):
    """(reduction length per split, splits), at most MAX_SPLITS: one row of INT4 about eight
    programs per SM of 128 channels (measured best: an unpacking program needs company to keep
    loads in flight); else about two, of 32 channels (one row) or 64 (more)."""
    if rows == 1 and group:
        return split_reduction(n, k, 4 * num_sms, 128, group, MAX_SPLITS)
    return split_reduction(n, k, num_sms, 32 if rows == 1 else 64, SPLIT_MULTIPLE, MAX_SPLITS)


def _output_plan(x, weight, group, sms):
    """(N, reduction length per split, splits) of ``x`` [rows, K] by ``weight``: INT4 words
    are [K/8, N], INT8 / FP8 weights [N, K]."""
    n = weight.shape[1 if group else 0]
    return (n, *plan(n, x.shape[1], x.shape[0], group, sms))


def applies(kind, group, dtype):
    """Whether the kernels take this weight: 16-bit activations, and INT4 groups of 32 to 512
    columns, a power of two (a group divides a split, and a tile of words)."""
    if dtype not in (torch.bfloat16, torch.float16):
        return False
    return kind != "int4" or (32 <= group <= SPLIT_MULTIPLE and group & (group - 1) == 0)


def partial_sums(x, weight, scale, low, group, sms, tile=None, pdl=False):
    """``x`` [rows <= 16, K] (rows contiguous) by the quantized ``weight`` ([K/8, N] INT4 words
    with ``scale`` and ``low`` [K/group, N]; or [N, K] INT8 / FP8 with ``scale`` [N]) -> FP32
    partial sums [splits, rows, N]. ``tile``: (BLOCK_N, BLOCK_K) instead of autotuning
    (Triton's CPU interpreter cannot time); ``pdl``: see ``triton_launch.launch``."""
    rows, k = x.shape
    n, per_split, splits = _output_plan(x, weight, group, sms)
    out = torch.empty((splits, rows, n), dtype=torch.float32, device=x.device)
    kernel = _dequant_product if rows > 1 else _int4_row if group else _dequant_row
    kernel, extra = (kernel, {}) if tile is None else (kernel.fn, dict(zip(("BLOCK_N", "BLOCK_K"), tile)))
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), splits)  # noqa: E731
    if rows > 1:
        launch(kernel, grid, pdl, x, weight, scale, scale if low is None else low, out, rows, n, k, x.stride(0),
               PER_SPLIT=per_split, GROUP=group, **extra)
    elif group:
        launch(kernel, grid, pdl, x, weight, scale, low, out, n, k, per_split, GROUP=group, **extra)
    else:
        launch(kernel, grid, pdl, x, weight, scale, out, n, k, per_split, **extra)
    return out


# Two ops over the same kernels, as for decode attention: Inductor launches the triton_op's,
# the opaque one launches them itself with programmatic dependent launch (for CUDA graphs).
@triton_op("tllm::dequant_product", mutates_args=())
def dequant_product(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, low: torch.Tensor | None,
                    group: int) -> torch.Tensor:
    return partial_sums(x, weight, scale, low, group, num_sms(x.device.index or 0))


@torch.library.custom_op("tllm::dequant_product_pdl", mutates_args=())
def dequant_product_pdl(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, low: torch.Tensor | None,
                        group: int) -> torch.Tensor:
    index = x.device.index or 0
    return partial_sums(x, weight, scale, low, group, num_sms(index), pdl=has_pdl(index))


@dequant_product_pdl.register_fake
def _dequant_product_pdl_fake(x, weight, scale, low, group):
    n, _, splits = _output_plan(x, weight, group, num_sms(x.device.index or 0))
    return x.new_empty((splits, x.shape[0], n), dtype=torch.float32)


def quantized_linear(x, weight, scale, extra, bias, kind):
    """``quantize.quantized_linear`` with this kernel for decode steps: what the ``quantize``
    pass puts in a graph (a build loaded from the cache imports this module, and so the op, to
    resolve it)."""
    return quantize.quantized_linear(x, weight, scale, extra, bias, kind, gemv="triton_op")


def quantized_linear_pdl(x, weight, scale, extra, bias, kind):
    """``quantized_linear`` with the kernels launched with PDL: for steps replayed as CUDA graphs."""
    return quantize.quantized_linear(x, weight, scale, extra, bias, kind, gemv="pdl")


quantized_linear.is_product = quantized_linear_pdl.is_product = True  # layer_split: a piece may end after it
