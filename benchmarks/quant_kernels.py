"""Time each quantized product (``quantize.quantized_linear``) against the 16-bit one on the layer
shapes of Llama-3.1-8B, each compiled with ``torch.compile`` as the decode graph is (Inductor,
coordinate-descent tuning; decode steps on quant_gemv's kernels, as in the graph): one row (a
batch-1 decode step), 8 rows, and a 2048-row prompt. Decode rows replay
100 calls back to back in a CUDA graph, over four copies of the weights in turn so that no call
finds its weights in L2. Prints microseconds per call and the weight bytes read per second.
Needs a CUDA GPU.

    python3 benchmarks/quant_kernels.py [--kinds fp8 int4 ...] [--rows 1 8 2048] [--json PATH]
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import quant_gemv  # noqa: E402
import quantize  # noqa: E402
from benchmark import graph_us_per_call  # noqa: E402

SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}  # [N, K]
KINDS = ("bf16", "fp8", "fp8_wo", "int8_wo", "int8", "int4")
COPIES = 4


def weight_bytes(tensors):
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def time_prompt(call, repeats=20):
    """Milliseconds per call of a long product (launch overhead is noise there)."""
    call()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        call()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1000 / repeats


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", nargs="+", default=KINDS, choices=KINDS)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--rows", nargs="+", type=int, default=[1, 8, 2048])
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    cuda = torch.device("cuda")
    torch._inductor.config.coordinate_descent_tuning = True
    figures = []
    print(f"{'shape':8} {'kind':14} {'rows':>5} {'us':>9} {'GB/s':>7}")
    for shape in args.shapes:
        n, k = SHAPES[shape]
        torch.manual_seed(0)
        weights = [torch.randn(n, k, device=cuda, dtype=torch.bfloat16) / k**0.5 for _ in range(COPIES)]
        for kind in args.kinds:
            sets = [(w, None, None) if kind == "bf16" else quantize.quantize_weight(w, kind, 128) for w in weights]
            read = weight_bytes(sets[0])
            for rows in args.rows:
                torch._dynamo.reset()
                x = torch.randn(1, rows, k, device=cuda, dtype=torch.bfloat16)
                product = torch.compile(
                    (lambda x, w, s, e: torch.nn.functional.linear(x, w)) if kind == "bf16" else
                    (lambda x, w, s, e, kind=kind: quant_gemv.quantized_linear(x, w, s, e, None, kind)))
                calls = [lambda t=t: product(x, *t) for t in sets]
                if rows <= 16:
                    us = graph_us_per_call(calls * (100 // COPIES))
                else:
                    us = 1000 * time_prompt(lambda: [c() for c in calls]) / COPIES
                figures.append(dict(shape=shape, n=n, k=k, kind=kind, rows=rows, us=us, bytes=read))
                print(f"{shape:8} {kind:14} {rows:5} {us:9.1f} {read / us / 1e3:7.0f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"card": torch.cuda.get_device_name(), "figures": figures}, indent=2))


if __name__ == "__main__":
    main()
