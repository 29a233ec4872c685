"""Run ``run_llm.py`` with decode-step features switched off, to measure what each gains on the
same machine (benchmarks/HISTORY.md): ``--without split_bias`` (biased products stay cuBLAS
addmm), ``combo_kernels`` (no horizontal fusion of small kernels), ``pdl`` (no programmatic
dependent launch of Inductor's kernels), ``long_flush`` (Inductor's own one-L2 flush before each
tuning timing), ``gated_down`` (Inductor's down projection of gated MLPs), ``fed_back`` (greedy
steps copy their inputs in from the host), ``kernel_pdl`` (our Triton kernels launched by
Inductor without PDL in CUDA graphs too), ``coordesc`` (no coordinate-descent tuning, as
``--tune none``), ``layer_split`` (Inductor compiles the whole graph, not each distinct layer
piece once), in any combination. Each is a RunConfig field; the other arguments go to
run_llm.py unchanged.

    python3 benchmarks/inductor_ab.py --without split_bias combo_kernels -- \\
        --model Qwen/Qwen2.5-0.5B-Instruct --random_weights --benchmark --precision BF16 --isl 128 --cudagraph
"""

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import cli  # noqa: E402
import run_llm  # noqa: E402

# switch name -> the RunConfig field it turns off
SWITCHES = {"split_bias": "split_bias", "combo_kernels": "combo_kernels", "pdl": "pdl", "long_flush": "tuning_flush",
            "gated_down": "gated_down", "fed_back": "fed_back", "kernel_pdl": "kernel_pdl",
            "layer_split": "layer_split"}


@cli.cli_main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--without", nargs="*", default=[], choices=[*SWITCHES, "coordesc"])
    args, rest = parser.parse_known_args(argv)
    changes = {SWITCHES[name]: False for name in args.without if name in SWITCHES}
    if "coordesc" in args.without:
        changes["tune"] = "none"
    config = dataclasses.replace(run_llm.parse([a for a in rest if a != "--"]), **changes)
    print(f"switched off: {', '.join(args.without) or 'nothing'}", flush=True)
    run_llm.run(config)


if __name__ == "__main__":
    main()
