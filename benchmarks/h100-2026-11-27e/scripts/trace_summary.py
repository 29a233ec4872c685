"""Summarise a torch.profiler chrome trace: kernels per decode step, and one step in order."""
import json, sys, collections
trace = json.load(open(sys.argv[1]))
ev = [e for e in trace["traceEvents"] if e.get("cat") == "kernel"]
ev.sort(key=lambda e: e["ts"])
agg = collections.defaultdict(list)
for e in ev:
    agg[e["name"]].append(e["dur"])
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 127
rows = sorted(agg.items(), key=lambda kv: -sum(kv[1]))
total = sum(sum(v) for v in agg.values())
print(f"total kernel us {total:.0f}, per step {total/steps:.1f}, kernels {len(ev)}, per step {len(ev)/steps:.1f}")
for name, d in rows[:40]:
    print(f"{sum(d)/steps:8.1f} us/step {len(d)/steps:6.2f}/step {sum(d)/len(d):7.2f} us  {name[:150]}")
# one step in order: between two occurrences of the per-step kernel with the largest mean
per_step = [(sum(d) / len(d), n) for n, d in agg.items() if steps - 2 <= len(d) <= steps + 2]
anchor = max(per_step)[1]
idx = [i for i, e in enumerate(ev) if e["name"] == anchor]
mid = len(idx) // 2
print(f"\none step (anchor {anchor[:80]}):")
for e in ev[idx[mid] + 1: idx[mid + 1] + 1]:
    print(f"{e['dur']:7.2f}  {e['name'][:160]}")
