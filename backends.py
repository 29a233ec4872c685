"""Backends that run a rewritten graph: ``eager`` (PyTorch runs the FX graph), ``inductor``
(``torch.compile``) and ``tensorrt`` (Torch-TensorRT), plus ``auto``, which picks the best one
available here and says which."""

import torch

import register_sdpa
from utils import UserError, log

BACKENDS = ("auto", "tensorrt", "inductor", "eager")
TUNE_MODES = ("decode", "all", "none")


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


def compile_graph(gm, backend, dtype, max_len, min_block_size=1, debug=False, tune=True):
    """A callable with the graph's calling convention, compiled for ``backend`` (compilers
    compile on the first call). ``tune``: Inductor tunes its kernels' launch parameters."""
    if backend == "eager":
        return gm
    if backend == "inductor":
        register_sdpa.register_inductor_decompositions()
        if debug:
            torch._logging.set_logs(recompiles=True, graph_breaks=True, perf_hints=True)
        # Coordinate-descent tuning of each generated kernel's launch parameters: decode is a
        # chain of small, latency-bound kernels, where this pays (at some compile time).
        options = {"coordinate_descent_tuning": tune}
        # Static shapes per distinct length (one decode shape, one prefill shape per prompt
        # length); a third length switches that dimension to dynamic on its own.
        return torch.compile(gm, fullgraph=True, options=options)
    if backend == "tensorrt":
        import tensorrt_backend

        return tensorrt_backend.compile(gm, dtype, max_len, min_block_size, debug)
    raise UserError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")

