"""Scratch: the Triton candidates' stages, and a split-K tensor-core product vs cuBLAS at 8 rows."""
import sys

import torch
import triton

sys.path.insert(0, ".")
import quant_gemv
import sampling
import top_candidates as tc
from benchmark import graph_us_per_call

cuda = torch.device("cuda")
torch.manual_seed(0)
V = 128256
for rows in (1, 8):
    x = torch.randn(rows, V, device=cuda) * 3
    width, keep, slices, count = sampling.plan(V)
    keys = torch.empty((rows, slices * keep), dtype=torch.int64, device=cuda)
    values = torch.empty((rows, count), device=cuda)
    ids = torch.empty((rows, count), dtype=torch.int64, device=cuda)
    for w in (2, 4, 8):
        def s1(w=w):
            return tc._slice_top[(slices, rows)](x, keys, V, x.stride(0), WIDTH=width, KEEP=keep, num_warps=w)
        print(f"rows {rows} stage1 warps {w}: {graph_us_per_call([s1] * 50):.1f} us")
    s1()
    for blk, chunk, w in ((32, 256, 4), (16, 256, 4), (64, 128, 4), (32, 128, 2), (32, 512, 8)):
        def s2():
            return tc._ranked[(triton.cdiv(slices * keep, blk), rows)](keys, values, ids, slices * keep, COUNT=count,
                                                                                 BLOCK=blk, CHUNK=chunk, num_warps=w)
        print(f"rows {rows} stage2 block {blk} chunk {chunk} warps {w}: {graph_us_per_call([s2] * 50):.1f} us")
    def op():
        return tc.candidates(x)
    print(f"rows {rows} op: {graph_us_per_call([op] * 50):.1f} us")
    v1, i1 = tc.candidates(x)
    v2, i2 = sampling.candidates(x)
    print("equal to torch:", torch.equal(v1, v2), torch.equal(i1, i2))

print("8-row products, BF16: cuBLAS vs split-K tensor-core kernel (quant_gemv, unit scale)")
for n, k in ((3072, 2048), (2048, 2048), (16384, 2048), (2048, 8192), (128256, 2048), (4096, 4096), (28672, 4096)):
    w = torch.randn(n, k, device=cuda, dtype=torch.bfloat16) / k**0.5
    xb = torch.randn(8, k, device=cuda, dtype=torch.bfloat16)
    one = torch.ones(n, device=cuda)
    def ref():
        return torch.nn.functional.linear(xb, w)
    comp = torch.compile(lambda: quant_gemv.partial_sums(xb, w, one, None, 0, 132).sum(0).to(torch.bfloat16))
    t_ref, t_k = graph_us_per_call([ref] * 20), graph_us_per_call([comp] * 20)
    floor = n * k * 2 / 4.8e12 * 1e6
    err = (comp().float() - ref().float()).abs().max().item()
    print(f"{n:6}x{k:5}: cuBLAS {t_ref:7.1f} us ({100*floor/t_ref:4.0f}%)  "
          f"kernel {t_k:7.1f} us ({100*floor/t_k:4.0f}%)  err {err:.3g}")
