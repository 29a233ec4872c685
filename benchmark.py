"""--benchmark: time prefill (TTFT) and every decode step (TPOT) of the compiled pipeline and of
PyTorch baselines (Hugging Face generate, eager or static cache + torch.compile, and the latter
quantized by torchao), and report them as a table, JSON and CSV rows."""

import contextlib
import csv
import io
import resource
import statistics
import time
from pathlib import Path

import torch
from tqdm import tqdm

import quantize
import tensor_parallel
import torchao_baseline
from detokenize import printer
from files import locked, write_atomic
from generate import collect, prefill
from generate import steps as token_steps
from sampling import row_values
from utils import UserError, leader, log

# Datasheet memory bandwidth (bytes/s) by the name torch reports, for the bandwidth floor.
CARD_BANDWIDTH = {
    "NVIDIA H100 80GB HBM3": 3.35e12,
    "NVIDIA H100 PCIe": 2.0e12,
    "NVIDIA H100 NVL": 3.9e12,
    "NVIDIA H200": 4.8e12,
    "NVIDIA A100-SXM4-80GB": 2.039e12,
    "NVIDIA A100-SXM4-40GB": 1.555e12,
    "NVIDIA L4": 0.3e12,
}

CSV_FIELDS = [
    "model", "runner", "backend", "cache", "cudagraph", "precision", "device", "batch_size", "isl", "num_tokens",
    "ttft_ms", "tpot_p50_ms", "tpot_p90_ms", "tpot_p99_ms", "decode_tokens_per_s", "e2e_ms",
    "achieved_gb_per_s", "pct_of_bandwidth", "peak_memory_gb", "build_cache", "export_s", "cache_load_s", "compile_s",
    "torch", "transformers",
]
COMPILED = ("hf_compile", "torchao")  # the baselines on Hugging Face's static cache, compiled on CUDA


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


class Clock:
    """Timestamps that need no host synchronisation on a GPU (CUDA events, read at the end)."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"
        self.marks = []

    def mark(self, *_):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def elapsed_ms(self):
        """Milliseconds from the first mark to each later one."""
        if self.cuda:
            torch.cuda.synchronize()
            return [self.marks[0].elapsed_time(m) for m in self.marks[1:]]
        return [(m - self.marks[0]) * 1e3 for m in self.marks[1:]]


def graph_us_per_call(calls, replays=20):
    """Microseconds per call of ``calls`` run back to back inside one CUDA graph (a decode
    step's kernels are back to back too), replayed ``replays`` times. For the microbenchmarks
    in benchmarks/."""
    for call in calls:  # compile / pick kernels outside the graph
        call()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1000 / (replays * len(calls))


def decode_bytes(model, batch_size, context_len, dtype):
    """Bytes a decode step must read at least: every weight once (the embedding table only for
    the rows it looks up, unless it is also the output projection) plus the valid K/V rows. Of
    a sharded model: all ranks' reads together (each holds its slices and K/V heads)."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    embedding = model.get_input_embeddings().weight
    if model.get_output_embeddings() is None or model.get_output_embeddings().weight is not embedding:
        weights -= embedding.numel() * embedding.element_size()
    config = model.config.get_text_config()
    _, heads, head_dim = tensor_parallel.attention_heads(config)
    heads = tensor_parallel.local_kv_heads(heads)
    kv = 2 * config.num_hidden_layers * heads * head_dim * context_len * batch_size * torch.finfo(dtype).bits // 8
    return (weights + kv) * tensor_parallel.world()


def _step_bytes(model, input_ids, config, dtype, quantized=True):
    """decode_bytes at the average context of a benchmark run (prompt + half the new tokens;
    a row's padding is not read), with quantized weights at their packed size unless not
    ``quantized`` (a 16-bit baseline)."""
    pads = statistics.fmean(padding(config))
    replaced, packed = quantize.weight_bytes(model, config) if quantized else (0, 0)
    return decode_bytes(model, config.batch_size, input_ids.shape[1] - pads + config.num_tokens / 2, dtype) \
        - replaced + packed


def padding(config):
    """Each row's left padding: with --mixed_lengths, row r's prompt is r / (2 * batch) shorter
    than --isl, so the rows' lengths spread over its upper half."""
    return [r * config.isl // (2 * config.batch_size) if config.mixed_lengths else 0 for r in range(config.batch_size)]


def summarize(ttfts, step_ms, e2es, batch_size, bytes_per_step, device):
    tpot_p50 = statistics.median(step_ms)
    stats = {
        "ttft_ms": statistics.median(ttfts),
        "tpot_p50_ms": tpot_p50,
        "tpot_p90_ms": percentile(step_ms, 90),
        "tpot_p99_ms": percentile(step_ms, 99),
        "tpot_mean_ms": statistics.fmean(step_ms),
        "decode_tokens_per_s": batch_size * 1e3 / statistics.fmean(step_ms),
        "e2e_ms": statistics.median(e2es),
        "bytes_per_decode_step": bytes_per_step,
        "achieved_gb_per_s": bytes_per_step / tpot_p50 / 1e6,
    }
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        bandwidth = CARD_BANDWIDTH.get(name)
        bandwidth = bandwidth and bandwidth * tensor_parallel.world()  # a sharded model: every rank's card
        stats["card"] = name
        stats["world_size"] = tensor_parallel.world()
        stats["datasheet_gb_per_s"] = bandwidth / 1e9 if bandwidth else None
        stats["floor_ms"] = bytes_per_step / bandwidth * 1e3 if bandwidth else None
        stats["pct_of_bandwidth"] = 100 * stats["floor_ms"] / tpot_p50 if bandwidth else None
        stats["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
    else:
        stats["card"] = "CPU"
        # the process's peak resident memory (Linux reports KiB), model and baselines included
        stats["peak_memory_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
    return stats


def timed_runs(label, config, run_once):
    """Warm-up, then timed iterations of ``run_once(clock)`` with a progress bar. Each run marks
    the clock at its start and after each token; returns TTFT, decode-step and e2e lists."""
    ttfts, steps, e2es = [], [], []
    bar = tqdm(range(config.warmup + config.iterations), desc=label, unit="it", leave=False, dynamic_ncols=True,
               disable=not leader())
    for i in bar:
        clock = Clock(config.torch_device)
        run_once(clock)
        marks = clock.elapsed_ms()
        if i >= config.warmup:
            ttfts.append(marks[0])
            steps += [b - a for a, b in zip(marks, marks[1:])]
            e2es.append(marks[-1])
    return ttfts, steps, e2es


def run(gen, input_ids, config, model, vision=None, embed=None, decode_positions=None, tokenizer=None):
    """Benchmark the compiled pipeline: fixed-length generation (greedy, or sampled as
    configured), EOS ignored.

    A VLM passes ``vision()``: it runs first in each iteration (image encoder, features merged
    into the prompt) and returns the prompt's ``(inputs_embeds, position_ids)``. TTFT includes
    it; ``vision_ms`` and ``prefill_ms`` split it. ``embed`` and ``decode_positions`` go to
    ``generate.steps``. With --stream each step's tokens are read back as a streaming run reads
    them, and the first row's detokenized with ``tokenizer``."""
    device = config.torch_device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    vision_clocks = []

    pads = padding(config)

    def once(clock):
        gen.reset()
        gen.set_rows(key_start=pads, **row_values([config.sampling] * config.batch_size))
        clock.mark()
        x, positions = input_ids, None
        if vision is not None:
            split = Clock(device)
            split.mark()
            x, positions = vision()
            split.mark()
            vision_clocks.append(split)
        _, token = prefill(gen, x, positions, chunk=config.prefill_chunk)
        decoding = token_steps(gen, token, config.num_tokens, embed, decode_positions)
        if not config.stream:
            for _ in decoding:
                clock.mark()
            return
        show, _ = printer(tokenizer, x[0, -4:].tolist(), lambda piece: None)  # (the terminal is not timed)

        def on_step(tokens):
            clock.mark()
            show(tokens)

        collect(decoding, [config.num_tokens] * config.batch_size, on_step=on_step)

    ttfts, steps, e2es = timed_runs("pipeline", config, once)
    problem = profile(once, config.profile, device) if config.profile else None
    stats = summarize(ttfts, steps, e2es, config.batch_size, _step_bytes(model, input_ids, config, gen.dtype), device)
    if vision is not None:
        vision_ms = [c.elapsed_ms()[0] for c in vision_clocks[config.warmup:config.warmup + config.iterations]]
        stats["vision_ms"] = statistics.median(vision_ms)
        stats["prefill_ms"] = statistics.median(t - v for t, v in zip(ttfts, vision_ms))
    if problem:
        stats["profile_error"] = f"--profile {config.profile}: {problem}"
    log_summary("pipeline", stats)
    return stats


def log_summary(name, stats):
    """One line per runner as soon as it is measured, so a run cut short (a slow baseline, a
    sweep's time limit) still shows what was measured before."""
    log(f"{name}: TTFT {stats['ttft_ms']:.2f} ms, TPOT p50 {stats['tpot_p50_ms']:.3f} ms, "
        f"{stats['decode_tokens_per_s']:.1f} tokens/s")


def profile(run_once, trace_path, device):
    """One more generation under torch.profiler: prints the kernels that take the time and
    writes a Chrome trace (open in Perfetto) to ``trace_path``. Returns why the trace was not
    written, or None."""
    from torch.profiler import ProfilerActivity

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.profiler.profile(activities=activities) as prof:
        run_once(Clock(device))
        if device.type == "cuda":
            torch.cuda.synchronize()
    sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=25))
    try:
        prof.export_chrome_trace(trace_path)
        if Path(trace_path).stat().st_size == 0:
            return "the trace is empty"
    except OSError as e:
        return f"the trace was not written ({e.strerror or e})"
    log(f"wrote profiler trace {trace_path}")
    return None


class _TokenClock:
    """A generate() streamer that only timestamps: HF calls put() with the prompt, then per token."""

    def __init__(self, clock):
        self.clock, self.calls = clock, 0

    def put(self, value):
        self.calls += 1
        if self.calls > 1:  # the first call carries the prompt
            self.clock.mark()

    def end(self):
        pass


def run_baselines(model, input_ids, config, extra_inputs=None, text_model=None):
    """Hugging Face generate on the same model and prompt: its own dynamic KV cache in eager
    mode, and/or its static cache with torch.compile (the usual alternatives), 16-bit or, for
    "torchao", in the run's quantized format (torchao_baseline.py).

    For a VLM, ``extra_inputs()`` returns more generate() inputs (pixels, or the prompt's
    embeddings) and is called inside the timed region; ``text_model`` is the part whose weights
    a decode step reads (for the bandwidth figures). The no-cache loop is text-only."""
    device = config.torch_device
    names = config.baselines
    # Per sub-model (a VLM's vision tower may use another implementation than its text model).
    previous = {name: getattr(model.config, name)._attn_implementation for name in model.config.sub_configs}
    previous[""] = model.config._attn_implementation
    model.set_attn_implementation("sdpa")  # stock transformers, not our op
    results = {}
    try:
        for name in names:
            log(f"baseline {name}")
            # a 16-bit baseline's floor reads 16-bit weights; torchao's, the run's format at our packed size
            bytes_per_step = _step_bytes(text_model or model, input_ids, config, model.dtype, name == "torchao")
            quantizing = torchao_baseline.quantized(model, config) if name == "torchao" else contextlib.nullcontext({})
            with quantizing as extra:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                run_once = _no_cache_loop if name == "no_cache" else _hf_generate

                def once(clock):
                    run_once(model, input_ids, config.num_tokens, clock, name in COMPILED, extra_inputs)

                ttfts, steps, e2es = timed_runs(name, config, once)
            results[name] = summarize(ttfts, steps, e2es, config.batch_size, bytes_per_step, device) | extra
            log_summary(name, results[name])
    finally:
        model.set_attn_implementation(previous)
    return results


def _hf_generate(model, input_ids, num_tokens, clock, static_compiled, extra_inputs=None):
    kwargs = dict(cache_implementation="static") if static_compiled else {}
    clock.mark()
    if extra_inputs is not None:
        kwargs.update(extra_inputs())
    model.generate(
        input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=num_tokens,
        min_new_tokens=num_tokens,  # fixed length, as our pipeline in benchmark mode
        do_sample=False,
        streamer=_TokenClock(clock),
        pad_token_id=0,
        **kwargs,
    )


def _no_cache_loop(model, input_ids, num_tokens, clock, _, extra_inputs=None):
    """The original tool's baseline: recompute the whole sequence for every token."""
    clock.mark()
    ids = input_ids
    for _ in range(num_tokens):
        token = model(ids, use_cache=False, logits_to_keep=1).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, token], 1)
        clock.mark()


def rows(result):
    """One CSV/table row per runner: the pipeline, then each baseline."""
    common = {k: result[k] for k in ("model", "backend", "cache", "cudagraph", "precision", "device", "batch_size",
                                     "isl", "num_tokens")}
    common.update(torch=result["versions"]["torch"], transformers=result["versions"]["transformers"],
                  build_cache=result["build_cache"]["status"])
    if result.get("tp", 1) > 1:  # (in the device column: a CSV keeps one set of columns)
        common["device"] += f" tp{result['tp']}"
    # (the format in the precision column: a CSV keeps one set of columns)
    quantized = quantize.label(result.get("quantization"))
    out = [dict(common, runner="pipeline", **result["timings_s"], **result["benchmark"],
                precision=f"{common['precision']} {quantized}" if quantized else common["precision"])]
    for name, stats in result.get("baselines", {}).items():  # (16-bit, but torchao's, whose stats say its precision)
        out.append(dict(common, runner=name, backend="pytorch", cache="hf", cudagraph=name in COMPILED, **stats))
    return out


def _fmt(value, digits=2):
    if value is None or value == "":
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def report(result, config):
    """Print the table (stdout); cli.write_result appends its rows to --results_csv."""
    table = rows(result)
    ours = table[0]
    print(f"\n{result['model']}  {ours['precision']}  batch {ours['batch_size']}  ISL {ours['isl']}  "
          f"{ours['num_tokens']} new tokens  on {result['benchmark']['card']}")
    header = f"{'runner':<12} {'backend':<9} {'TTFT ms':>9} {'TPOT p50':>9} {'p90':>7} {'p99':>7} " \
             f"{'tok/s':>8} {'e2e ms':>9} {'GB/s':>7} {'%floor':>6} {'speedup':>8}"
    print(header)
    print("-" * len(header))
    for row in table:
        speedup = row["tpot_p50_ms"] / ours["tpot_p50_ms"]
        print(f"{row['runner']:<12} {row['backend']:<9} {_fmt(row['ttft_ms']):>9} {_fmt(row['tpot_p50_ms'], 3):>9} "
              f"{_fmt(row['tpot_p90_ms'], 3):>7} {_fmt(row['tpot_p99_ms'], 3):>7} "
              f"{_fmt(row['decode_tokens_per_s'], 1):>8} {_fmt(row['e2e_ms'], 1):>9} "
              f"{_fmt(row['achieved_gb_per_s'], 1):>7} {_fmt(row.get('pct_of_bandwidth'), 1):>6} "
              f"{'' if row is ours else f'{speedup:.2f}x':>8}")
    if ours.get("vision_ms") is not None:
        print(f"pipeline TTFT = vision encoder {ours['vision_ms']:.2f} ms + prefill {ours['prefill_ms']:.2f} ms")
    timings = result["timings_s"]
    built = f"export {timings['export_s']:.1f} s" if "export_s" in timings else \
        f"loaded from the build cache in {timings['cache_load_s']:.1f} s"
    print(f"{built}, compile {timings['compile_s']:.1f} s"
          + (f", peak memory {ours['peak_memory_gb']:.2f} GB" if ours.get("peak_memory_gb") else ""))
    if len(table) > 1:
        print("speedup = baseline TPOT / pipeline TPOT")


def check_csv(path):
    """One UserError line if the CSV at ``path`` has other columns than the rows we append:
    two schemas in one file would misread every later row."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return ""
    old = path.read_text()
    header = next(csv.reader(io.StringIO(old)), [])
    if header != CSV_FIELDS:
        raise UserError(f"--results_csv {path}: its columns are not this version's ({len(header)} against "
                        f"{len(CSV_FIELDS)}); name a new file")
    return old


def append_csv(path, new_rows):
    path = Path(path)
    with locked(path):
        old = check_csv(path)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, extrasaction="ignore")
        if not old:
            writer.writeheader()
        writer.writerows(new_rows)
        write_atomic(path, old + buffer.getvalue())
    log(f"appended {len(new_rows)} rows to {path}")
