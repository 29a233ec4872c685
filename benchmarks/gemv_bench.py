"""Time the batch-1 matrix-vector products of one decode layer (q/k/v, o, gate/up, down) of
Qwen2.5-0.5B and Llama-3.2-1B, BF16, as cuBLAS runs them, as Inductor generates them (with
coordinate-descent tuning, which turns a one-row product into a reduction; alone and with the
neighbours it fuses in the model: bias, RMSNorm, SiLU x up), and as a plain Triton GEMV at
several tile shapes (for gate/up: with SiLU(gate) x up computed in the same kernel).

Each variant runs back to back inside one CUDA graph over enough copies of the weight (200 MB)
that L2 cannot hold them, as in a real step where every layer has its own weights; the figure
is microseconds per call, next to the time to read the weight at the datasheet 3.35 TB/s.
This is the evidence behind ``backends.split_bias`` and behind not writing our own GEMVs
(benchmarks/HISTORY.md, 7febb37). Needs a CUDA GPU.

    python3 benchmarks/gemv_bench.py [--json PATH]
"""

import argparse
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmark import graph_us_per_call  # noqa: E402

SHAPES = [("qwen05", 896, 4864, 1152, True), ("llama1b", 2048, 8192, 3072, False)]  # hidden, MLP, q/k/v width, bias
DATASHEET_BYTES_PER_US = 3.35e6


@triton.jit
def _gemv(X, W, B, Out, N, K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
          GLU: tl.constexpr, BIAS: tl.constexpr):
    """Out[n] = W[n] . X (+ B[n]); with GLU, W holds 2N rows and Out[n] = silu(W[n] . X) * (W[N + n] . X)."""
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < N
    acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    up = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        ok = n_ok[:, None] & (k < K)[None, :]
        x = tl.load(X + k, mask=k < K, other=0.0).to(tl.float32)
        acc += tl.load(W + n[:, None] * K + k[None, :], mask=ok, other=0.0, eviction_policy="evict_first") * x[None, :]
        if GLU:
            w_up = tl.load(W + (n + N)[:, None] * K + k[None, :], mask=ok, other=0.0, eviction_policy="evict_first")
            up += w_up * x[None, :]
    y = tl.sum(acc, 1)
    if BIAS:
        y += tl.load(B + n, mask=n_ok).to(tl.float32)
    if GLU:
        y = y / (1.0 + tl.exp(-y)) * tl.sum(up, 1)
    tl.store(Out + n, y.to(Out.dtype.element_ty), mask=n_ok)


def triton_gemv(x, weight, out, bias=None, glu=False, block_n=8, block_k=256, warps=4):
    n, k = out.shape[-1], x.shape[-1]
    _gemv[(triton.cdiv(n, block_n),)](x, weight, x if bias is None else bias, out, n, k, BLOCK_N=block_n,
                                      BLOCK_K=block_k, GLU=glu, BIAS=bias is not None, num_warps=warps)


def rms_norm(x, weight):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)).to(x.dtype) * weight


def silu_times_up(gate_up):
    half = gate_up.shape[-1] // 2
    return F.silu(gate_up[..., :half]) * gate_up[..., half:]


def inductor(fn):
    return torch.compile(fn, fullgraph=True, dynamic=False, options={"coordinate_descent_tuning": True})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    torch._dynamo.config.cache_size_limit = 64  # one static compile per shape
    device, dtype = torch.device("cuda"), torch.bfloat16
    print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, triton {triton.__version__}, bf16")
    linear = inductor(lambda x, w: F.linear(x, w))
    linear_bias = inductor(lambda x, w, b: F.linear(x, w, b))
    linear_plus_bias = inductor(lambda x, w, b: F.linear(x, w) + b)
    norm = inductor(lambda x, r, nw: rms_norm(x + r, nw))
    norm_linear = inductor(lambda x, r, nw, w: F.linear(rms_norm(x + r, nw), w))
    glu = inductor(silu_times_up)
    glu_linear = inductor(lambda gu, w: F.linear(silu_times_up(gu), w))
    results = []

    def report(model, product, variant, calls, weight_bytes):
        us = graph_us_per_call(calls)
        results.append(dict(model=model, product=product, variant=variant, us=us,
                            floor_us=weight_bytes / DATASHEET_BYTES_PER_US))
        floor = weight_bytes / DATASHEET_BYTES_PER_US
        print(f"{model:8} {product:7} {variant:34} {us:7.2f} us  (weight read {floor:5.2f})", flush=True)

    def weights(rows, cols):
        copies = max(2, math.ceil(200e6 / (rows * cols * 2)))
        return [torch.randn(rows, cols, device=device, dtype=dtype) * 0.02 for _ in range(copies)]

    for model, hidden, mlp, qkv_width, has_bias in SHAPES:
        x, residual, norm_weight = (torch.randn(n, device=device, dtype=dtype)
                                    for n in ((1, hidden), (1, hidden), hidden))
        # q/k/v
        ws, nbytes = weights(qkv_width, hidden), qkv_width * hidden * 2
        bias = torch.randn(qkv_width, device=device, dtype=dtype)
        out = torch.empty(1, qkv_width, device=device, dtype=dtype)
        if has_bias:
            report(model, "qkv", "cublas addmm", [lambda w=w: F.linear(x, w, bias) for w in ws], nbytes)
            report(model, "qkv", "inductor linear+bias", [lambda w=w: linear_bias(x, w, bias) for w in ws], nbytes)
            report(model, "qkv", "inductor mm + add", [lambda w=w: linear_plus_bias(x, w, bias) for w in ws], nbytes)
        report(model, "qkv", "cublas mm", [lambda w=w: F.linear(x, w) for w in ws], nbytes)
        report(model, "qkv", "inductor mm", [lambda w=w: linear(x, w) for w in ws], nbytes)
        for bn, bk, warps in [(4, 512, 4), (2, 1024, 4), (1, 1024, 4), (2, 512, 4), (1, 2048, 8)]:
            report(model, "qkv", f"triton bn{bn} bk{bk} w{warps}" + (" +bias" if has_bias else ""),
                   [lambda w=w: triton_gemv(x, w, out, bias if has_bias else None, block_n=bn, block_k=bk,
                                            warps=warps) for w in ws], nbytes)
        # o
        ws, nbytes = weights(hidden, hidden), hidden * hidden * 2
        out = torch.empty(1, hidden, device=device, dtype=dtype)
        report(model, "oproj", "cublas mm", [lambda w=w: F.linear(x, w) for w in ws], nbytes)
        report(model, "oproj", "inductor mm", [lambda w=w: linear(x, w) for w in ws], nbytes)
        for bn, bk, warps in [(4, 512, 4), (2, 1024, 4), (1, 1024, 4), (1, 2048, 8)]:
            report(model, "oproj", f"triton bn{bn} bk{bk} w{warps}",
                   [lambda w=w: triton_gemv(x, w, out, block_n=bn, block_k=bk, warps=warps) for w in ws], nbytes)
        # gate/up, with the RMSNorm Inductor fuses in front of it
        ws, nbytes = weights(2 * mlp, hidden), 2 * mlp * hidden * 2
        out = torch.empty(1, mlp, device=device, dtype=dtype)
        report(model, "gateup", "cublas mm", [lambda w=w: F.linear(x, w) for w in ws], nbytes)
        report(model, "gateup", "inductor mm", [lambda w=w: linear(x, w) for w in ws], nbytes)
        report(model, "gateup", "inductor add+norm+mm (model)",
               [lambda w=w: norm_linear(x, residual, norm_weight, w) for w in ws], nbytes)
        report(model, "gateup", "inductor add+norm alone", [lambda: norm(x, residual, norm_weight)] * 16, 0)
        for bn, bk, warps in [(4, 256, 4), (4, 512, 4), (2, 512, 4), (2, 1024, 4), (1, 1024, 4), (1, 512, 2)]:
            report(model, "gateup", f"triton glu bn{bn} bk{bk} w{warps}",
                   [lambda w=w: triton_gemv(x, w, out, glu=True, block_n=bn, block_k=bk, warps=warps) for w in ws],
                   nbytes)
        # down, with the SiLU(gate) x up Inductor fuses in front of it
        ws, nbytes, out = weights(hidden, mlp), hidden * mlp * 2, torch.empty(1, hidden, device=device, dtype=dtype)
        gate_up = torch.randn(1, 2 * mlp, device=device, dtype=dtype)
        act = torch.randn(1, mlp, device=device, dtype=dtype)
        report(model, "down", "cublas mm", [lambda w=w: F.linear(act, w) for w in ws], nbytes)
        report(model, "down", "inductor mm", [lambda w=w: linear(act, w) for w in ws], nbytes)
        report(model, "down", "inductor silu*up+mm (model)", [lambda w=w: glu_linear(gate_up, w) for w in ws], nbytes)
        report(model, "down", "inductor silu*up alone", [lambda: glu(gate_up)] * 16, 0)
        for bn, bk, warps in [(2, 1024, 4), (1, 1024, 4), (1, 2048, 4), (1, 2048, 8), (2, 2048, 8), (1, 4096, 8)]:
            report(model, "down", f"triton bn{bn} bk{bk} w{warps}",
                   [lambda w=w: triton_gemv(act, w, out, block_n=bn, block_k=bk, warps=warps) for w in ws], nbytes)
        # the Triton kernel computes the right thing
        triton_gemv(act, ws[0], out)
        want = F.linear(act.float(), ws[0].float())
        print(f"{model} down: Triton rel err {((out.float() - want).norm() / want.norm()).item():.2e}")
        gate_up_weight, act_out = weights(2 * mlp, hidden)[0], torch.empty(1, mlp, device=device, dtype=dtype)
        triton_gemv(x, gate_up_weight, act_out, glu=True)
        want = silu_times_up(F.linear(x.float(), gate_up_weight.float()))
        print(f"{model} gate/up: Triton GLU rel err {((act_out.float() - want).norm() / want.norm()).item():.2e}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
