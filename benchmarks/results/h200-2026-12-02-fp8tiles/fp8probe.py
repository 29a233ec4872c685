"""Scratch: the FP8 one-row kernel (quant_gemv._dequant_row) over a grid of tiles, warps and
pipeline stages on Llama-3.1-8B's shapes, against the autotuned path. Weights in 4 copies
(no L2 hits), 100 calls a graph."""
import itertools
import sys

import torch
import triton

sys.path.insert(0, ".")
import quant_gemv
import quantize
from benchmark import graph_us_per_call

SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}
cuda = torch.device("cuda")
GRID = [c for c in itertools.product((16, 32, 64), (256, 512, 1024), (4, 8), (1, 2, 3)) if c[:2] != (64, 1024)]
best = {}
for shape, (n, k) in SHAPES.items():
    torch.manual_seed(0)
    sets = [quantize.quantize_weight(torch.randn(n, k, device=cuda, dtype=torch.bfloat16) / k**0.5, "fp8", 128)
            for _ in range(4)]
    x = torch.randn(1, k, device=cuda, dtype=torch.bfloat16)
    nbytes = n * k
    per_split, splits = quant_gemv.plan(n, k, 1, 132)
    out = torch.empty((splits, 1, n), device=cuda)
    auto = [lambda s=s: quant_gemv.partial_sums(x, s[0], s[1], None, 0, 132) for s in sets]
    t_auto = graph_us_per_call(auto * 25)
    cfg = quant_gemv._dequant_row.best_config
    print(f"{shape:8} autotuned {t_auto:6.1f} us {nbytes / t_auto / 1e3:6.0f} GB/s  ({cfg})", flush=True)
    rows = []
    for bn, bk, w, st in GRID:
        grid = (triton.cdiv(n, bn), splits)
        calls = [lambda s=s: quant_gemv._dequant_row.fn[grid](x, s[0], s[1], s[1], out, n, k, per_split, GROUP=0,
                                                              BLOCK_N=bn, BLOCK_K=bk, num_warps=w, num_stages=st)
                 for s in sets]
        try:
            t = graph_us_per_call(calls * 25)
        except Exception:  # (out of resources)
            continue
        rows.append((t, bn, bk, w, st))
    rows.sort()
    for t, bn, bk, w, st in rows[:5]:
        print(f"{shape:8} N{bn:<3} K{bk:<5} w{w} s{st}: {t:6.1f} us {nbytes / t / 1e3:6.0f} GB/s", flush=True)
    best[shape] = rows[0]
print("best:", best)
