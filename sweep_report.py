"""Collect sweep cells into results.jsonl and turn them into a Markdown table and a plot.

    python sweep_report.py --append results.jsonl --cell cell.json
    python sweep_report.py --append results.jsonl --failed NAME --error "..." --cell-args "..."
    python sweep_report.py --report OUT_DIR   # OUT_DIR/results.jsonl -> results.md, tpot.png
"""

import argparse
import json
import sys
from pathlib import Path

from files import locked, write_atomic

COLUMNS = [("model", "model"), ("runner", "runner"), ("backend", "backend"), ("cache", "cache"),
           ("precision", "prec"), ("isl", "ISL"), ("ttft_ms", "TTFT ms"), ("tpot_p50_ms", "TPOT p50 ms"),
           ("tpot_p99_ms", "TPOT p99 ms"), ("decode_tokens_per_s", "tok/s"), ("pct_of_bandwidth", "% floor"),
           ("compile_s", "compile s")]


def append(path, record):
    with locked(path), open(path, "a") as f:  # one line per cell, appended whole
        f.write(json.dumps(record) + "\n")


def rows(records):
    """Flatten each cell into one row per runner (pipeline and baselines)."""
    out = []
    for r in records:
        if "error" in r:
            out.append({"model": r["cell"], "runner": "FAILED", "backend": r["error"][:80]})
            continue
        common = dict(model=r["model"], cache=r["cache"], precision=r["precision"], isl=r["isl"])
        tp = f" tp{r['tp']}" if r.get("tp", 1) > 1 else ""  # (a sharded run: its rank count)
        out.append(dict(common, runner="pipeline", backend=r["backend"] + tp, **r["benchmark"], **r["timings_s"]))
        for name, stats in r.get("baselines", {}).items():
            hf_cache = {"hf_generate": "hf dynamic", "hf_compile": "hf static", "torchao": "hf static",
                        "no_cache": "none"}[name]
            out.append(dict(common, runner=name, backend="pytorch", **stats, cache=hf_cache))
    return out


def fmt(value):
    if isinstance(value, float):
        return f"{value:.3f}" if value < 10 else f"{value:.1f}"
    return "" if value is None else str(value)


def report(folder):
    folder = Path(folder)
    table = []
    for number, line in enumerate((folder / "results.jsonl").read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            table += rows([json.loads(line)])
        except (ValueError, KeyError, TypeError, AttributeError):  # cut short, or not a cell's record
            print(f"[sweep] warning: {folder / 'results.jsonl'} line {number} is damaged; left out of the table",
                  file=sys.stderr)
    lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(fmt(row.get(key)) for key, _ in COLUMNS) + " |" for row in table]
    write_atomic(folder / "results.md", "\n".join(lines) + "\n")
    plot(table, folder / "tpot.png")


def bar_series(table):
    """{series: {group: TPOT p50}} for the plot: one group per model, ISL and precision; one
    series per baseline and per backend + cache of our pipeline (a grid has several)."""
    ok = [r for r in table if r["runner"] != "FAILED"]
    series = {}
    for r in ok:
        name = f"ours {r['backend']} {r['cache']}" if r["runner"] == "pipeline" else r["runner"]
        group = f"{r['model'].split('/')[-1]}\nISL {r['isl']} {r['precision']}"
        series.setdefault(name, {})[group] = r["tpot_p50_ms"]
    return dict(sorted(series.items(), key=lambda item: (not item[0].startswith("ours"), item[0])))


def plot(table, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = bar_series(table)
    if not series:
        return
    groups = sorted({group for values in series.values() for group in values})
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(groups)), 4))
    for i, (name, values) in enumerate(series.items()):
        xs = [j + i * width for j, group in enumerate(groups) if group in values]
        ax.bar(xs, [values[group] for group in groups if group in values], width, label=name)
    ax.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(groups))], groups, fontsize=8)
    ax.set_ylabel("TPOT p50 (ms, lower is better)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title("Decode time per output token")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    tmp.replace(path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--append")
    parser.add_argument("--cell")
    parser.add_argument("--failed")
    parser.add_argument("--error", default="")
    parser.add_argument("--cell-args", default="")
    parser.add_argument("--report")
    args = parser.parse_args()
    if args.append and args.cell:
        append(args.append, json.loads(Path(args.cell).read_text()))
    elif args.append and args.failed:
        append(args.append, {"cell": args.failed, "error": args.error, "args": args.cell_args})
    if args.report:
        report(args.report)


if __name__ == "__main__":
    main()
