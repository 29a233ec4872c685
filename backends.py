"""Backends that run a rewritten graph: ``eager`` (PyTorch runs the FX graph), ``inductor``
(``torch.compile``) and ``tensorrt`` (Torch-TensorRT), plus ``auto``, which picks the best one
available here and says which."""

import torch

import layer_split
import register_sdpa
from export_llm import finish
from utils import UserError, log

aten = torch.ops.aten

BACKENDS = ("auto", "tensorrt", "inductor", "eager")


def tensorrt_import_error():
    """None if torch_tensorrt imports here, else why not (one line)."""
    try:
        import torch_tensorrt  # noqa: F401
    except Exception as e:  # ImportError, or OSError when the TensorRT libraries are missing
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None


def choose_backend(requested, device):
    if requested == "auto":
        if device.type == "cuda" and tensorrt_import_error() is None:
            chosen = "tensorrt"
        elif device.type == "cuda":
            chosen = "inductor"
        else:
            chosen = "eager"
        log(f"backend auto -> {chosen}")
        return chosen
    if requested == "tensorrt":
        if device.type != "cuda":
            raise UserError("--backend tensorrt needs a CUDA GPU (use --backend inductor or eager on CPU)")
        error = tensorrt_import_error()
        if error:
            raise UserError(
                f"--backend tensorrt: torch_tensorrt is not usable here ({error}); "
                "install requirements-tensorrt.txt on a machine with TensorRT, or use --backend inductor"
            )
    return requested


def compile_graph(gm, config, max_len, tune, engine_path=None):
    """A callable with the graph's calling convention, compiled for ``config.backend``
    (compilers compile on the first call). ``tune``: Inductor tunes its kernels' launch
    parameters. A graph split by layer (``layer_split``) is compiled one distinct piece at a time.
    ``engine_path``: where the build cache keeps this graph's TensorRT engines."""
    if config.backend == "eager":
        return gm
    if config.backend == "tensorrt":
        import tensorrt_backend

        return tensorrt_backend.compile(gm, config.dtype, max_len, config.min_block_size, config.debug, engine_path)
    register_sdpa.register_inductor_decompositions()
    if config.debug:
        torch._logging.set_logs(recompiles=True, graph_breaks=True, perf_hints=True)
    on_gpu = config.on_cuda
    if tune and on_gpu and config.tuning_flush:
        flush_past_the_launch()
    # Coordinate-descent tuning of each generated kernel's launch parameters: decode is a chain
    # of small, latency-bound kernels, where this pays (at some compile time). Combo kernels
    # launch independent small kernels (rope of q and of k, the cache writes) as one.
    # Programmatic dependent launch (Hopper and later; Inductor skips it on older GPUs) lets
    # each generated kernel start while the one before it drains, waiting only where it reads
    # that kernel's output. What each gained: benchmarks/HISTORY.md.
    options = {"coordinate_descent_tuning": tune, "combo_kernels": on_gpu and config.combo_kernels,
               "triton.enable_pdl": on_gpu and config.pdl}

    # Static shapes per distinct length (one decode shape, one prefill shape per prompt
    # length); a third length switches that dimension to dynamic on its own.
    def compile_piece(piece):
        return torch.compile(piece, fullgraph=True, options=options)

    if not layer_split.is_split(gm):
        return compile_piece(gm)
    count, distinct = layer_split.compile_pieces(gm, compile_piece)
    log(f"compiling the graph as {count} layer pieces, {distinct} distinct")
    return gm


# Bytes Inductor writes to flush the GPU's caches before it times a tuning candidate: Triton's
# own do_bench default.
TUNING_FLUSH_BYTES = 256 << 20


def flush_past_the_launch():
    """Make Inductor flush 256 MB, not one L2, before each timed launch of a tuning candidate.
    Its timer starts when the GPU finishes the flush; a launch from Python that takes longer
    than the flush is counted as kernel time, which for microsecond decode kernels is most of
    it, and the tuner picks by host noise. With the longer flush the launch is queued before the
    timer starts (what it gained: benchmarks/HISTORY.md, 9c94564). Process-wide."""
    from torch._inductor.runtime.benchmarking import benchmarker

    # L2_cache_size is a cached property: an instance value replaces the card's L2 size
    benchmarker.L2_cache_size = TUNING_FLUSH_BYTES


def split_bias(gm):
    """Rewrite ``linear(x, W, b)`` and ``addmm(b, x, W)`` (GPT-2's Conv1D) as a product without
    bias plus ``b``. With coordinate-descent tuning, Inductor turns a one-row product into a
    reduction that fuses with the ops around it, but hands one with a bias to cuBLAS, which is
    slower for one row (benchmarks/HISTORY.md, 7febb37). Returns how many nodes it rewrote."""
    count = 0
    for node in list(gm.graph.nodes):
        if node.target is aten.linear.default and len(node.args) == 3 and node.args[2] is not None:
            x, weight, bias = node.args
            product = (aten.linear.default, (x, weight))
        elif node.target is aten.addmm.default and len(node.args) == 3 and not node.kwargs:
            bias, x, weight = node.args
            product = (aten.mm.default, (x, weight))
        else:
            continue
        with gm.graph.inserting_before(node):
            out = gm.graph.call_function(aten.add.Tensor, (gm.graph.call_function(*product), bias))
        node.replace_all_uses_with(out)
        gm.graph.erase_node(node)
        count += 1
    finish(gm)
    return count
