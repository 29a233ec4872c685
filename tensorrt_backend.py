"""The Torch-TensorRT backend (torch_tensorrt 2.13 API), kept thin.

The rewritten graph is re-exported on the first call's real inputs (sequence length, cache
length and ``start_idx`` dynamic, as the cache mode needs) and handed to
``torch_tensorrt.dynamo.compile``. TensorRT engines do not mutate their inputs, so the caller
uses the functional form of static_v2 (updated caches come back as outputs).
"""

import contextlib

import torch
from torch.export import Dim

import register_sdpa
from utils import log


def _dynamic_shapes(gm, args, max_len):
    seq = Dim("seq", min=1, max=max_len)
    specs = [{d: seq} for d in gm.meta["seq_dims"]]
    cache = gm.meta["cache"]
    rest = args[len(specs):]
    if cache == "static_v2":
        specs.append({0: seq})  # cache_position
        specs += [None] * (len(rest) - 1)
    elif cache == "static_v1":
        specs += [None] * (len(rest) - 1) + [Dim.DYNAMIC]  # start_idx
    elif cache == "dynamic":
        past = Dim("past", min=0, max=max_len)
        specs += [{2: past}] * len(rest)
    return tuple(specs)


def _traceable(args, specs):
    """Example inputs whose dynamic sizes are at least 2: export specialises sizes (and ints)
    of 0 and 1, as a first step with an empty cache or a one-token prompt would give. Only
    shapes matter for tracing, so the stand-ins are zeros."""
    out = []
    for arg, spec in zip(args, specs):
        if isinstance(spec, dict) and any(arg.shape[d] < 2 for d in spec):
            arg = arg.new_zeros([max(2, n) if d in spec else n for d, n in enumerate(arg.shape)])
        elif spec is Dim.DYNAMIC and arg < 2:
            arg = 2
        out.append(arg)
    return tuple(out)


def export_for_tensorrt(gm, args, max_len):
    """The rewritten graph as an ExportedProgram, which is what torch_tensorrt.dynamo.compile
    takes; its symbolic shapes become the engines' optimisation profiles."""
    specs = _dynamic_shapes(gm, args, max_len)
    return torch.export.export(gm, _traceable(args, specs), dynamic_shapes=specs, strict=False)


def compile(gm, dtype, max_len, min_block_size, debug):
    """Returns a callable that builds the engine on its first call, then runs it."""
    import torch_tensorrt

    register_sdpa.register_tensorrt_converters()
    compiled = None

    def run(*args):
        nonlocal compiled
        if compiled is None:
            ep = export_for_tensorrt(gm, args, max_len)
            settings = dict(
                arg_inputs=list(args),
                min_block_size=min_block_size,
                truncate_double=True,
                # FP16 matmuls accumulate in FP32, as TensorRT users expect for accuracy.
                use_fp32_acc=dtype == torch.float16,
                # Our masks are sliding windows and position masks, never a plain causal bias.
                attn_bias_is_causal=False,
                immutable_weights=True,
            )
            log(f"building TensorRT engines (min_block_size={min_block_size})")
            with torch_tensorrt.logging.debug() if debug else contextlib.nullcontext():
                compiled = torch_tensorrt.dynamo.compile(ep, **settings)
        return compiled(*args)

    return run


def enable_cudagraphs(enabled):
    """TensorRT's own CUDA-graph mode: each engine captures and replays itself."""
    import torch_tensorrt

    torch_tensorrt.runtime.set_cudagraphs_mode(enabled)
