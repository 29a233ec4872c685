"""The table of benchmarks/start_times.sh: per run, what the build cache did, seconds from
process start until the generator was ready, and the run's timings.

    python3 benchmarks/start_times.py RESULTS_FOLDER
"""

import json
import sys
from pathlib import Path


def main(folder):
    folder = Path(folder)
    print(f"{'run':<36} {'cache':<7} {'wall s':>7} {'ready s':>8} {'weights':>7} {'export':>6} {'loaded':>6} "
          f"{'compile':>7} {'TTFT ms':>8} {'TPOT ms':>8}")
    for line in (folder / "times.txt").read_text().splitlines():
        name, start, end, status = line.split()
        try:
            record = json.loads((folder / f"{name}.json").read_text())
        except (OSError, ValueError):
            print(f"{name:<36} failed (exit {status}): see {name}.log")
            continue
        t, bench = record["timings_s"], record["benchmark"]
        print(f"{name:<36} {record['build_cache']['status']:<7} {float(end) - float(start):7.1f} "
              f"{t.get('ready_s', float('nan')):8.1f} {t['load_s']:7.1f} {t.get('export_s', 0):6.1f} "
              f"{t.get('cache_load_s', 0):6.2f} {t['compile_s']:7.1f} {bench['ttft_ms']:8.2f} "
              f"{bench['tpot_p50_ms']:8.3f}")


if __name__ == "__main__":
    main(sys.argv[1])
