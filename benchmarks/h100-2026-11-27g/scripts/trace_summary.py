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
# Where the step's time goes: span between anchors, kernel time summed, GPU busy time (union of
# kernel and memcpy intervals), so overlap = sum - busy (PDL) and idle = span - busy (gaps).
gpu = sorted((e for e in trace["traceEvents"] if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")),
             key=lambda e: e["ts"])
def window(a, b):
    return [e for e in gpu if a <= e["ts"] < b]
stats, gaps = [], collections.Counter()
for i0, i1 in zip(idx[1:-2], idx[2:-1]):
    a, b = ev[i0]["ts"] + ev[i0]["dur"], ev[i1]["ts"] + ev[i1]["dur"]
    w = window(a, b)
    busy, end, prev = 0.0, a, ev[i0]["name"][:60]
    for e in w:
        s, f = max(e["ts"], end), e["ts"] + e["dur"]
        if s - end > 1.0:
            gaps[prev] += s - end
        if f > s:
            busy += f - s
            end = f
        prev = e["name"][:60]
    stats.append((b - a, sum(e["dur"] for e in w), busy, len(w)))
med = lambda k: sorted(s[k] for s in stats)[len(stats) // 2]
print(f"\nper step (median of {len(stats)}): span {med(0):.1f} us, kernel+copy time {med(1):.1f} us, "
      f"GPU busy {med(2):.1f} us, idle {med(0) - med(2):.1f} us, overlap {med(1) - med(2):.1f} us, ops {med(3)}")
print("largest idle gaps (>1 us) after, us per step:")
for name, g in gaps.most_common(8):
    print(f"{g / len(stats):7.2f}  {name}")
