"""Run the script named by $TIMED_SCRIPT (argv passed on) and print torch.compile's time breakdown
(dynamo_timed phases) at exit, plus where coordinate-descent tuning spends its time: compiling
candidate configs vs timing them, per kernel."""
import atexit, collections, os, runpy, sys, time
import torch._dynamo.utils as dynamo_utils
from torch._inductor.runtime import triton_heuristics as th

spent = collections.defaultdict(lambda: [0, 0.0, 0, 0.0])  # kernel -> [compiles, s, timings, s]
def timed(method, slot):
    def wrapper(self, *a, **k):
        t = time.perf_counter()
        try:
            return method(self, *a, **k)
        finally:
            row = spent[self.inductor_meta.get("kernel_name", "?")]
            row[slot] += 1; row[slot + 1] += time.perf_counter() - t
    return wrapper
for name, slot in (("_precompile_config", 0), ("bench", 2)):
    if hasattr(th.CachingAutotuner, name):
        setattr(th.CachingAutotuner, name, timed(getattr(th.CachingAutotuner, name), slot))

def report():
    print("COMPILE TIMES\n" + dynamo_utils.compile_times(repr="str", aggregate=True))
    rows = sorted(spent.items(), key=lambda kv: -(kv[1][1] + kv[1][3]))
    tot = [sum(r[i] for _, r in rows) for i in range(4)]
    print(f"TUNING: {len(rows)} kernels, {tot[0]} compiles {tot[1]:.1f} s, {tot[2]} timings {tot[3]:.1f} s")
    for name, r in rows[:25]:
        print(f"  {r[0]:4d} compiles {r[1]:6.2f} s  {r[2]:4d} timings {r[3]:6.2f} s  {name[:90]}")
    print("counters:", dict(dynamo_utils.counters["inductor"]), flush=True)
atexit.register(report)
script = os.environ["TIMED_SCRIPT"]
sys.path.insert(0, os.getcwd())
sys.argv = [script] + sys.argv[1:]
runpy.run_path(script, run_name="__main__")
