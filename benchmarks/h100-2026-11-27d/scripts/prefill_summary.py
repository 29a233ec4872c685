"""Kernels of the first prefill in a torch.profiler trace (everything before the first decode-attention kernel)."""
import json, sys, collections
ev = sorted((e for e in json.load(open(sys.argv[1]))["traceEvents"] if e.get("cat") == "kernel"), key=lambda e: e["ts"])
end = next(i for i, e in enumerate(ev) if "attend_split" in e["name"])
pre = ev[:end]
span = pre[-1]["ts"] + pre[-1]["dur"] - pre[0]["ts"]
busy = sum(e["dur"] for e in pre)
print(f"prefill: {len(pre)} kernels, busy {busy:.0f} us, span {span:.0f} us")
agg = collections.defaultdict(list)
for e in pre:
    agg[e["name"]].append(e["dur"])
for name, d in sorted(agg.items(), key=lambda kv: -sum(kv[1]))[:30]:
    print(f"{sum(d):8.1f} us {len(d):4d}x {sum(d)/len(d):7.2f}  {name[:140]}")
