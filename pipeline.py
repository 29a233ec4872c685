"""Build a Generator for a language model from a RunConfig (export -> passes -> compile ->
warm-up, or a load from the build cache) with progress lines, and the run's shared JSON fields
and text output."""

import contextlib
import copy
import dataclasses
import time
from dataclasses import dataclass

import torch

import backends
import build_cache
import cache_modes
import export_llm
import passes
import quantize
from detokenize import decode
from generate import Generator, collect, prefill, steps
from sampling import row_values
from utils import log, process_age, versions


def build_generator(module, make_inputs, seq_dims, config, max_len, warm_inputs, identity=None, calibration=None):
    """Export ``module(x, position_ids)``, rewrite it (``passes``), compile it and warm it up;
    or, where the build cache holds this build, load its graphs and compiled artifacts instead.

    ``make_inputs(length)`` returns fresh example inputs ``(x, position_ids)`` for export;
    ``warm_inputs`` are inputs of the real prompt's shape, run once so that compilers compile
    (and CUDA graphs capture) now rather than inside the first timed step. ``identity``: what
    the weights are (``build_cache.model_identity``); None leaves the build cache out.
    ``calibration``: a function giving the token ids SmoothQuant calibrates on (called only
    when building).
    Returns the Generator, the build's timings in seconds, and what the build cache did.
    """
    timings = {}
    with build_cache.building(config, "language model", max_len, module, identity) as build, \
            contextlib.ExitStack() as stack:
        if build.graphs is None:
            start = time.perf_counter()
            build.keep(export_and_rewrite(module, make_inputs(2), seq_dims, config, max_len, calibration))
            timings["export_s"] = time.perf_counter() - start
            log(f"exported ({timings['export_s']:.1f} s)")
        else:
            timings["cache_load_s"] = build.load_s
        gm, first_gm = build.graphs["step"], build.graphs.get("first")
        freed = quantize.release_replaced(module, build.graphs, config)
        if freed:
            log(f"freed {freed / 1e6:,.1f} MB of 16-bit weights, replaced by quantized ones")

        start = time.perf_counter()
        log(f"compiling with {config.backend}" + (" + CUDA graphs" if config.cudagraph else ""))
        if build.status == "loaded" and config.backend == "inductor":
            import torch._inductor.config as inductor_config

            # Everything is compiled already: no pool of compile workers to start
            stack.enter_context(inductor_config.patch(compile_threads=1))
        graph = backends.compile_graph(gm, config, max_len, passes.tuned(passes.Graph(config, max_len)),
                                       build.engine_path("step"))
        if first_gm is not None:
            first_gm = backends.compile_graph(first_gm, config, max_len,
                                              passes.tuned(passes.Graph(config, max_len, kind="first")),
                                              build.engine_path("first"))
        own_cudagraph = config.cudagraph and config.backend != "tensorrt"
        if config.cudagraph and not own_cudagraph:
            import tensorrt_backend

            tensorrt_backend.enable_cudagraphs(True)
        gen = Generator(graph, gm.meta.get("cache_shapes", []), config.cache, config.batch_size, max_len, config.dtype,
                        config.torch_device, cudagraph=own_cudagraph, first_graph=first_gm, fed_back=config.fed_back,
                        row_inputs=gm.meta.get("row_inputs", ()))
        if config.backend != "eager" or own_cudagraph:  # (eager PyTorch has nothing to compile or capture)
            warm_up(gen, warm_inputs, config, max_len)
        timings["compile_s"] = time.perf_counter() - start
        log(f"compiled ({timings['compile_s']:.1f} s)")
    if build.save_s:
        timings["cache_save_s"] = build.save_s
    ready = process_age()
    if ready is not None:
        timings["ready_s"] = ready  # from process start: what a user waits for
    return gen, timings, build_cache.record(build)


def warm_up(gen, warm_inputs, config, max_len):
    """Prefill the prompt and take two decode steps, so that compilers compile (and CUDA graphs
    capture) now, then forget the sequence."""
    x, positions = warm_inputs
    prefill(gen, x, positions, config.prefill_chunk)
    # Decode steps get a fresh one-token tensor; a slice of the prompt has other strides, on
    # which torch.compile guards: warming up with it left a recompile for the first timed step.
    last = x[:, -1:].clone(memory_format=torch.contiguous_format)
    for _ in range(2):
        if gen.length < max_len:
            gen.step(last, None if positions is None else positions[..., -1:] + 1)
    gen.reset()
    if config.on_cuda:
        torch.cuda.synchronize()


def export_and_rewrite(module, example_inputs, seq_dims, config, max_len, calibration=None):
    """The graphs the passes make of ``module``: {"step": ..., "first": ...} (the first-prefill
    graph where the cache mode has one)."""
    exporting = contextlib.nullcontext()
    if config.quant_format and config.backend == "tensorrt":  # ModelOpt quantizes the module itself
        import tensorrt_backend

        exporting = tensorrt_backend.quantize_with_modelopt(module, config, calibration())
    log(f"exporting {type(module).__name__} with torch.export")
    with exporting:
        gm = export_llm.export_graph(module, example_inputs, seq_dims, max_len)
    if quantize.kind_of(config) and config.quant_algo == "smoothquant":
        log("calibrating SmoothQuant")
        gm.meta["activation_amax"] = quantize.calibrate(module, calibration())
    gm, notes = passes.run("export", gm, passes.Graph(config, max_len))
    layers = len(export_llm.attention_nodes(gm))
    graphs = {}
    # The first-prefill graph: the same module attributes (weights shared), its own graph.
    if cache_modes.MODES[config.cache].FIRST_GRAPH:
        graphs["first"] = torch.fx.GraphModule(gm, copy.deepcopy(gm.graph))
        graphs["first"].meta.update(gm.meta)  # (a new GraphModule starts with none)
    graphs["step"], step_notes = passes.run("graph", gm, passes.Graph(config, max_len))
    line = f"passes: {', '.join(notes)}; step graph: {', '.join(step_notes) or 'none'}"
    if "first" in graphs:
        graphs["first"], first_notes = passes.run("graph", graphs["first"], passes.Graph(config, max_len, kind="first"))
        line += f"; first prefill graph: {', '.join(first_notes)}"
    log(f"{layers} attention ops, cache {config.cache or 'none'}; {line}")
    return graphs


@dataclass
class Built:
    """A language model ready to generate: its generator, tokenizer (None for a benchmark of
    random ids), EOS ids, the run's JSON fields so far, and the model (the baselines run it)."""

    gen: Generator
    tokenizer: object
    eos_ids: list
    record: dict
    model: object = None

    @property
    def max_len(self):
        return self.gen.max_len


def run_record(config, source, prompt_len, max_len, timings, cached, text_model, **extra):
    """The JSON fields every run shares (run_llm.py and run_vlm.py add their own); ``cached``:
    what the build cache did (``build_generator``); ``text_model``: the Hugging Face language
    model (its widths choose INT4's default group size)."""
    return {
        "model": config.model_name,
        "source": str(source),
        "random_weights": config.random_weights,
        **extra,
        "backend": config.backend,
        "cache": config.cache,
        "cudagraph": config.cudagraph,
        "decode_attention": config.decode_attention,
        "passes": passes.plan(config),
        "precision": config.precision,
        "device": config.device,
        "batch_size": config.batch_size,
        "tp": config.tp,
        "isl": prompt_len,
        "num_tokens": config.num_tokens,
        "max_len": max_len,
        "sampling": dataclasses.asdict(config.sampling) if config.sampler else None,
        "quantization": quantize.recorded(config, text_model),
        "timings_s": timings,
        "build_cache": cached,
        "versions": versions(),
    }


def generate_text(gen, x, position_ids, input_ids, config, tokenizer, eos_ids, embed=None, decode_positions=None):
    """Generation from a prompt already embedded (a VLM's); prints the first row's text, returns
    the JSON fields."""
    gen.reset()
    gen.set_rows(**row_values([config.sampling] * gen.batch_size))
    _, token = prefill(gen, x, position_ids, config.prefill_chunk)
    limits = [config.num_tokens] * gen.batch_size
    rows = collect(steps(gen, token, config.num_tokens, embed, decode_positions), limits,
                   () if config.ignore_eos else eos_ids)
    texts = [decode_text(tokenizer, row) for row in rows]
    print(texts[0])
    return dict(input_token_ids=input_ids.tolist(), generated_token_ids=rows, generated_text=texts)


def decode_text(tokenizer, ids):
    """A reply's text, as shown: stripped."""
    return decode(tokenizer, ids).strip()
