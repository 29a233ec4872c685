"""The down projection of a gated MLP for one-token decode steps as one Triton kernel,
``tllm::gated_down(gate_up, weight, gelu)``: ``down(act(gate) * up)`` for a few rows.

Why: Inductor computes a one-row product as a reduction and inlines ``act(gate) * up`` into it,
so every block of output rows re-reads both halves of ``gate_up`` and recomputes the product;
with few output rows per program and no split of the reduction, Qwen2.5-0.5B's down projection
took over three times the time its weights take to read (benchmarks/HISTORY.md, 6c2b8ac).
Here each program owns a block of output rows and one split of the reduction, computes the
activation once per tile for all its rows, and writes FP32 partial sums; the graph adds the few
splits, which Inductor folds into the kernel that reads the result.

CUDA only; importing this module needs triton. ``use_gated_down`` rewrites a decode graph.
"""

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from export_llm import finish
from triton_launch import has_pdl, launch, num_sms, split_reduction

aten = torch.ops.aten
MAX_SPLITS = 8  # Inductor unrolls a sum over at most 8 elements into the kernel that reads it
SPLIT_MULTIPLE = 256  # each split's length is a multiple of the largest reduction tile
# Widest output (hidden size) the rewrite takes. Measured against Inductor's own kernel
# (benchmarks/HISTORY.md, 849d1e5): faster at 896 rows (Qwen2.5-0.5B) and 1152 (Gemma 3 1B),
# slower at 2048 (Llama-3.2-1B), a tie at 4096 (Llama-3.1-8B); wider outputs give Inductor
# enough row blocks to fill the GPU without splitting the reduction.
MAX_ROWS = 1152


@triton.autotune(
    configs=[triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=w)
             for n in (8, 16, 32) for k in (128, 256) for w in (4, 8)],
    key=["rows", "inner"],
)
@triton.jit
def _gated_down(GateUp, W, Partial, rows, inner, gu_stride, PER_SPLIT: tl.constexpr, GELU: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr):
    """Program (row block, split, batch row): FP32 sums over the split of W[n, k] * h[k], with
    h = act(gate[k]) * up[k] computed once per tile."""
    if PDL:  # see triton_launch.launch
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    block, split, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    n = block * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
    for offset in range(0, PER_SPLIT, BLOCK_K):
        k = split * PER_SPLIT + offset + tl.arange(0, BLOCK_K)
        gate = tl.load(GateUp + b * gu_stride + k, mask=k < inner, other=0.0).to(tl.float32)
        up = tl.load(GateUp + b * gu_stride + inner + k, mask=k < inner, other=0.0).to(tl.float32)
        if GELU:  # tanh approximation: 0.5 * (1 + tanh(z)) = sigmoid(2z)
            act = gate * tl.sigmoid(1.5957691216057308 * (gate + 0.044715 * gate * gate * gate))
        else:
            act = gate * tl.sigmoid(gate)
        w = tl.load(W + n[:, None] * inner + k[None, :], mask=(n < rows)[:, None] & (k < inner)[None, :], other=0.0)
        acc += w.to(tl.float32) * (act * up)[None, :]
    tl.store(Partial + (split * tl.num_programs(2) + b) * rows + n, tl.sum(acc, 1), mask=n < rows)


def plan(rows, inner, num_sms):
    """(keys of the reduction per split, splits): about two programs per SM at 16 rows each,
    at most MAX_SPLITS."""
    return split_reduction(rows, inner, num_sms, 16, SPLIT_MULTIPLE, MAX_SPLITS)


def partial_sums(gate_up, weight, gelu, num_sms, tile=None, pdl=False):
    """``gate_up`` [B, 2I] (rows contiguous), ``weight`` [N, I] -> FP32 partial sums [splits, B, N].
    ``tile``: (BLOCK_N, BLOCK_K) instead of autotuning (Triton's CPU interpreter cannot time).
    ``pdl``: see ``triton_launch.launch``."""
    batch, inner, rows = gate_up.shape[0], weight.shape[1], weight.shape[0]
    per_split, splits = plan(rows, inner, num_sms)
    out = torch.empty((splits, batch, rows), dtype=torch.float32, device=gate_up.device)
    kernel, extra = (_gated_down, {}) if tile is None else (_gated_down.fn, dict(zip(("BLOCK_N", "BLOCK_K"), tile)))
    grid = lambda meta: (triton.cdiv(rows, meta["BLOCK_N"]), splits, batch)  # noqa: E731
    launch(kernel, grid, pdl, gate_up, weight, out, rows, inner, gate_up.stride(0),
                            PER_SPLIT=per_split, GELU=gelu, **extra)
    return out


# Two ops over the same kernel, as for decode attention: Inductor launches the triton_op's,
# the opaque one launches it itself with programmatic dependent launch (for CUDA graphs).
@triton_op("tllm::gated_down", mutates_args=())
def gated_down(gate_up: torch.Tensor, weight: torch.Tensor, gelu: bool) -> torch.Tensor:
    return partial_sums(gate_up, weight, gelu, num_sms(gate_up.device.index or 0))


@torch.library.custom_op("tllm::gated_down_pdl", mutates_args=())
def gated_down_pdl(gate_up: torch.Tensor, weight: torch.Tensor, gelu: bool) -> torch.Tensor:
    index = gate_up.device.index or 0
    return partial_sums(gate_up, weight, gelu, num_sms(index), pdl=has_pdl(index))


@gated_down_pdl.register_fake
def _gated_down_pdl_fake(gate_up, weight, gelu):
    splits = plan(weight.shape[0], weight.shape[1], num_sms(gate_up.device.index or 0))[1]
    return gate_up.new_empty((splits, gate_up.shape[0], weight.shape[0]), dtype=torch.float32)


ACTIVATIONS = {aten.silu.default: False, aten.gelu.default: True}


def _gated_input(node):
    """(gate_up, gelu) if ``node`` is ``act(gate_up[..., :I]) * gate_up[..., I:]``, else None."""
    if node.op != "call_function" or node.target is not aten.mul.Tensor or len(node.args) != 2:
        return None
    for act, up in (node.args, node.args[::-1]):
        if getattr(act, "target", None) not in ACTIVATIONS or getattr(up, "target", None) is not aten.slice.Tensor:
            continue
        if act.target is aten.gelu.default and act.kwargs.get("approximate") != "tanh":
            continue
        gate = act.args[0]
        if getattr(gate, "target", None) is not aten.slice.Tensor or gate.args[0] is not up.args[0]:
            continue
        # fuse_linears' split of its fused product: [..., 0:I] and [..., I:2I]
        if len(gate.args) == len(up.args) == 4 and gate.args[1:3] == (-1, 0) and up.args[1] == -1 and \
                up.args[2] == gate.args[3] and up.args[3] == 2 * gate.args[3]:
            return up.args[0], ACTIVATIONS[act.target]
    return None


def gated_down_projection(gate_up, weight, gelu, pdl=False):
    """``linear(act(gate) * up, weight)``, with one-token steps on ``tllm::gated_down`` (or its
    ``_pdl`` twin). A plain function in the graph: Dynamo inlines it, so each compiled step length
    gets its own choice (a prompt chunk keeps Inductor's GEMM)."""
    if gate_up.shape[-2] != 1:
        inner = gate_up.shape[-1] // 2
        gate, up = gate_up[..., :inner], gate_up[..., inner:]
        act = torch.nn.functional.gelu(gate, approximate="tanh") if gelu else torch.nn.functional.silu(gate)
        return torch.nn.functional.linear(act * up, weight)
    op = torch.ops.tllm.gated_down_pdl if pdl else torch.ops.tllm.gated_down
    partial = op(gate_up.reshape(-1, gate_up.shape[-1]), weight, gelu)
    return partial.sum(0).to(gate_up.dtype).view(*gate_up.shape[:-1], weight.shape[0])


def use_gated_down(gm, pdl=False):
    """Point the down projections of gated MLPs at most MAX_ROWS wide in a static_v2 decode
    graph (one that will run on CUDA) at ``gated_down_projection``; ``pdl`` for a graph whose
    steps are replayed as CUDA graphs. Returns how many it rewrote."""
    count = 0
    for node in list(gm.graph.nodes):
        if node.target is not aten.linear.default or len(node.args) != 2:
            continue
        found = _gated_input(node.args[0])
        if found is None or node.meta["val"].shape[-1] > MAX_ROWS:
            continue
        gate_up, gelu = found
        node.target = gated_down_projection
        node.args = (gate_up, node.args[1], gelu, pdl)
        count += 1
    finish(gm)
    return count
