"""Time the in-graph sampler (``sampling.sample``) and its pieces on one row (``--rows``: a
batch) of Llama 3's 128256-token vocabulary, each compiled with ``torch.compile`` and replayed
100 times back to back in a CUDA graph: the whole sampler with its Triton candidates
(``top_candidates.py``) and with ``torch.sort``'s at 1024, 256 and 64 candidates,
``torch.topk`` alone at those sizes and in two stages (the best of each of 128 slices, then
the best of those), a whole-vocabulary sort, the 1024 candidates found slice by slice both
ways, the vocabulary-wide Gumbel noise with a plain and a sliced argmax, and the argmax alone
both ways. Says which
piece of the sampler's cost over greedy decoding (BENCHMARKS.md) to cut. Needs a CUDA GPU.

    python3 benchmarks/sampler_bench.py [--rows N] [--json PATH]
"""

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import export_llm  # noqa: E402
import sampling  # noqa: E402
import top_candidates  # noqa: E402
from benchmark import graph_us_per_call  # noqa: E402

VOCAB = 128256


def two_stage_topk(x, k, slices=128):
    """``x.topk(k)`` as the best k of each of ``slices`` slices (one thread block each), then the
    best k of those."""
    rows, size = x.shape
    x = torch.nn.functional.pad(x, (0, -size % slices), value=float("-inf"))
    width = x.shape[1] // slices
    values, ids = x.view(rows, slices, width).topk(k, -1)
    ids = ids + torch.arange(slices, device=x.device)[:, None] * width
    values, picked = values.reshape(rows, -1).topk(k, -1)
    return values, ids.reshape(rows, -1).gather(1, picked)


def with_candidates(count, *args):
    """``sampling.sample`` with ``count`` candidates (read when the function is traced)."""
    kept, sampling.CANDIDATES = sampling.CANDIDATES, count
    try:
        return sampling.sample(*args)
    finally:
        sampling.CANDIDATES = kept


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1, help="batch rows (default 1)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    cuda = torch.device("cuda")
    torch.manual_seed(0)
    rows = args.rows
    logits = torch.randn(rows, VOCAB, device=cuda) * 3
    greedy = logits.argmax(-1)
    position = torch.full((rows, 1), 200, device=cuda)
    row = dict(temperature=torch.full((rows,), 0.8, device=cuda), top_k=torch.full((rows,), 50, device=cuda),
               top_p=torch.full((rows,), 0.9, device=cuda), seed=torch.arange(1, rows + 1, device=cuda))
    inputs = (logits, greedy, position, *row.values())
    vocab = torch.arange(VOCAB, device=cuda)[None]
    variants = {
        "argmax": lambda: logits.argmax(-1),
        "argmax in 128 slices (the graph's)": lambda: export_llm.argmax_in_slices(logits),
        "Gumbel noise + argmax, whole vocabulary": lambda: torch.argmax(
            logits / 0.8 + sampling.gumbel(row["seed"], position[:, -1], vocab), -1),
        "Gumbel noise + argmax in slices (the sampler's)": lambda: export_llm.argmax_in_slices(
            logits / 0.8 + sampling.gumbel(row["seed"], position[:, -1], vocab)),
        "sample, 1024 Triton candidates (the sampler's)": lambda: top_candidates.sample(*inputs),
        **{f"sample, {k} torch.sort candidates": (lambda k=k: with_candidates(k, *inputs)) for k in (1024, 256, 64)},
        **{f"topk {k}": (lambda k=k: logits.topk(k, -1)) for k in (1024, 256, 64)},
        **{f"two-stage topk {k}": (lambda k=k: two_stage_topk(logits, k)) for k in (256, 64)},
        "sort, whole vocabulary": lambda: logits.sort(-1, descending=True),
        "1024 candidates in 128 slices, torch.sort": lambda: sampling.candidates(logits),
        "1024 candidates in 128 slices, Triton (the sampler's)": lambda: top_candidates.candidates(logits),
    }
    figures = {}
    for name, call in variants.items():
        torch._dynamo.reset()
        compiled = torch.compile(call)
        figures[name] = graph_us_per_call([compiled] * 100)
        print(f"{name:54} {figures[name]:8.1f} us")
    if args.json:
        Path(args.json).write_text(json.dumps({"card": torch.cuda.get_device_name(), "rows": rows, "us": figures},
                                              indent=2))


if __name__ == "__main__":
    main()
