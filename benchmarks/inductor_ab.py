"""Run ``run_llm.py`` with decode-step changes of BENCHMARKS.md runs 4-9 switched off, to
repeat their same-machine comparisons: ``--without split_bias`` (biased products stay cuBLAS
addmm), ``combo_kernels`` (no horizontal fusion of small kernels), ``pdl`` (no programmatic
dependent launch), ``long_flush`` (Inductor's own one-L2 flush before each tuning timing),
``gated_down`` (Inductor's down projection of gated MLPs), ``fed_back`` (greedy steps copy their
inputs in from the host, as before the replayed step wrote them itself), ``kernel_pdl`` (our
Triton kernels launched by Inductor without PDL in CUDA graphs too), ``coordesc`` (no
coordinate-descent tuning: Inductor's Triton configs as its heuristics or, with
TORCHINDUCTOR_MAX_AUTOTUNE_POINTWISE=1, its own benchmark of a few configs pick them),
``layer_split`` (Inductor compiles the whole graph, not each distinct layer piece once), in any
combination. The other arguments go to run_llm.py unchanged.

    python3 benchmarks/inductor_ab.py --without split_bias combo_kernels -- \\
        --model Qwen/Qwen2.5-0.5B-Instruct --random_weights --benchmark --precision BF16 --isl 128 --cudagraph
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import backends  # noqa: E402
import register_sdpa  # noqa: E402
import run_llm  # noqa: E402

# switch name -> the Inductor option backends.compile_graph turns on
INDUCTOR_OPTIONS = {"combo_kernels": "combo_kernels", "pdl": "triton.enable_pdl",
                    "coordesc": "coordinate_descent_tuning"}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--without", nargs="*", default=[], choices=["split_bias", "long_flush", "gated_down", "fed_back",
                                                                      "kernel_pdl", "layer_split", *INDUCTOR_OPTIONS])
    args, rest = parser.parse_known_args()
    if "split_bias" in args.without:
        backends.split_bias = lambda gm: 0
    if "long_flush" in args.without:
        backends.flush_past_the_launch = lambda: None
    if "kernel_pdl" in args.without:
        import gated_down

        split_k, down = register_sdpa.use_split_k_decode, gated_down.use_gated_down
        register_sdpa.use_split_k_decode = lambda gm, pdl=False: split_k(gm)
        gated_down.use_gated_down = lambda gm, pdl=False: down(gm)
    if "gated_down" in args.without:
        import gated_down

        gated_down.use_gated_down = lambda gm, pdl=False: 0
    if "layer_split" in args.without:
        import layer_split

        layer_split.compile_by_layer = lambda gm, compile_piece: (compile_piece(gm), (1, 1))
    if "fed_back" in args.without:
        import generate

        generate.Generator.next_token = lambda gen: gen.step(gen.last_token[:, None])[1]
    off = {INDUCTOR_OPTIONS[name]: False for name in args.without if name in INDUCTOR_OPTIONS}
    if off:
        compile_graph = torch.compile

        def compile_with_options_off(model, **kwargs):
            kwargs["options"] = {**kwargs.get("options", {}), **off}
            return compile_graph(model, **kwargs)

        torch.compile = compile_with_options_off
    print(f"switched off: {', '.join(args.without) or 'nothing'}", flush=True)
    run_llm.main([a for a in rest if a != "--"])


if __name__ == "__main__":
    main()
