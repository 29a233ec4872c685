"""Run ``run_llm.py`` with the decode-step changes of BENCHMARKS.md run 4 switched off, to
repeat its same-machine comparison: ``--without split_bias`` (biased products stay cuBLAS
addmm), ``--without combo_kernels`` (no horizontal fusion of small kernels), or both. The other
arguments go to run_llm.py unchanged.

    python3 benchmarks/inductor_ab.py --without split_bias combo_kernels -- \\
        --model Qwen/Qwen2.5-0.5B-Instruct --random_weights --benchmark --precision BF16 --isl 128 --cudagraph
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import backends  # noqa: E402
import run_llm  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--without", nargs="*", default=[], choices=["split_bias", "combo_kernels"])
    args, rest = parser.parse_known_args()
    if "split_bias" in args.without:
        backends.split_bias = lambda gm: 0
    if "combo_kernels" in args.without:
        compile_graph = torch.compile

        def compile_without_combo(model, **kwargs):
            kwargs["options"] = {**kwargs.get("options", {}), "combo_kernels": False}
            return compile_graph(model, **kwargs)

        torch.compile = compile_without_combo
    print(f"switched off: {', '.join(args.without) or 'nothing'}", flush=True)
    run_llm.main([a for a in rest if a != "--"])


if __name__ == "__main__":
    main()
