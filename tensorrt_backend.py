"""The Torch-TensorRT backend (torch_tensorrt 2.13 API), kept thin.

The rewritten graph is re-exported on the first call's real inputs (sequence length, cache
length and ``start_idx`` dynamic, as the cache mode needs) and handed to
``torch_tensorrt.dynamo.compile``. TensorRT engines do not mutate their inputs, so the caller
uses the functional form of static_v2 (updated caches come back as outputs).
"""

import contextlib
import copy

import torch
from torch.export import Dim

import cache_modes
import tensor_parallel
from utils import UserError, log

# --quant_format on TensorRT: NVIDIA ModelOpt's preset for (format, --weight_only, --quant_algo).
# Only these: torch_tensorrt 2.13 converts 8-bit quantize ops (INT8, FP8) and NVFP4 blocks, not
# INT4 (its impl/quantize.py), and ModelOpt 0.47 has no FP8 weight-only preset. Each preset
# keeps the LM head in 16 bit.
MODELOPT_PRESETS = {
    ("fp8", False, "max"): "FP8_DEFAULT_CFG",
    ("int8", False, "max"): "INT8_DEFAULT_CFG",
    ("int8", False, "smoothquant"): "INT8_SMOOTHQUANT_CFG",
    ("int8", True, "max"): "INT8_WEIGHT_ONLY_CFG",
    ("nvfp4", False, "max"): "NVFP4_DEFAULT_CFG",
}


def modelopt_preset(quant_format, weight_only, quant_algo, quant_lm_head):
    """The name of ModelOpt's preset for these flags, or one line on why TensorRT cannot run them."""
    preset = MODELOPT_PRESETS.get((quant_format, bool(weight_only), quant_algo))
    if preset is None:
        raise UserError(f"--quant_format {quant_format}{' --weight_only' if weight_only else ''} does not run on "
                        "--backend tensorrt (ModelOpt + torch_tensorrt 2.13: fp8, int8, int8 --weight_only, int8 "
                        "--quant_algo smoothquant, nvfp4); --backend inductor runs it")
    if quant_lm_head:
        raise UserError("--quant_lm_head: ModelOpt's presets keep the LM head 16-bit on --backend tensorrt")
    return preset


def quantize_with_modelopt(module, config, ids):
    """Quantize ``module`` (``module(ids, position_ids)``, on the GPU) in place with ModelOpt's
    preset for the run's flags, calibrating on ``ids`` [1, L]; returns the context under which
    it must be exported (ModelOpt's quantizers then trace as ``tensorrt::quantize_op``, which
    torch_tensorrt converts)."""
    try:
        import modelopt.torch.quantization as mtq
        from modelopt.torch.quantization.utils import export_torch_mode
    except ImportError:
        raise UserError("--quant_format on --backend tensorrt quantizes with NVIDIA ModelOpt: "
                        "pip install -r requirements-tensorrt.txt") from None
    if config.quant_format == "nvfp4" and torch.cuda.get_device_capability(config.torch_device) < (10, 0):
        raise UserError("--quant_format nvfp4 needs a Blackwell GPU (compute capability 10.0 or newer)")
    preset = modelopt_preset(config.quant_format, config.weight_only, config.quant_algo, config.quant_lm_head)
    positions = torch.arange(ids.shape[1], device=ids.device)[None]
    log(f"quantizing with ModelOpt's {preset}, calibrated on {ids.shape[1]} tokens")
    # (a copy: the presets are module-level dicts that quantize() must not share)
    mtq.quantize(module, copy.deepcopy(getattr(mtq, preset)), lambda model: model(ids, positions))
    return export_torch_mode()


def _dynamic_shapes(gm, args, max_len):
    """The model inputs' sequence dims, the row inputs' static shapes, then what the cache mode
    says of the inputs it added."""
    seq = Dim("seq", min=1, max=max_len)
    specs = [{d: seq} for d in gm.meta["seq_dims"]] + [None] * len(gm.meta.get("row_inputs", ()))
    specs += cache_modes.MODES[gm.meta["cache"]].tensorrt_shapes(len(args) - len(specs), seq, max_len)
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


def compile(gm, dtype, max_len, min_block_size, debug, engine_path=None):
    """Returns a callable that builds the engine on its first call, then runs it. With
    ``engine_path`` (the build cache's), an engine saved there is loaded instead, and a new one
    is saved there."""
    import torch_tensorrt

    register_converters()
    compiled = None

    def run(*args):
        nonlocal compiled
        if compiled is None and engine_path is not None and engine_path.exists():
            compiled = torch_tensorrt.load(str(engine_path)).module()
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
                **tensor_parallel_settings(),
            )
            log(f"building TensorRT engines (min_block_size={min_block_size})")
            with torch_tensorrt.logging.debug() if debug else contextlib.nullcontext():
                compiled = torch_tensorrt.dynamo.compile(ep, **settings)
            if engine_path is not None:
                # (retrace keeps the engines' symbolic shapes; protocol 4 for weights over 4 GB)
                torch_tensorrt.save(compiled, str(engine_path), output_format="exported_program",
                                    arg_inputs=list(args), retrace=True, pickle_protocol=4)
        return compiled(*args)

    return run


def enable_cudagraphs(enabled):
    """TensorRT's own CUDA-graph mode: each engine captures and replays itself."""
    import torch_tensorrt

    torch_tensorrt.runtime.set_cudagraphs_mode(enabled)


def register_converters():
    """Teach Torch-TensorRT (2.13) both ops: a position mask plus TensorRT's IAttention layer
    (through torch_tensorrt's own SDPA converter, which handles grouped K/V heads natively).

    Called when an engine is first built; importing this module never needs TensorRT."""
    from torch_tensorrt.dynamo._SourceIR import SourceIR
    from torch_tensorrt.dynamo.conversion import dynamo_tensorrt_converter, impl
    from torch_tensorrt.dynamo.conversion.converter_utils import cast_trt_tensor


    def visible(ctx, target, name, q_pos, k, window):
        ir = SourceIR.ATEN
        num_keys = impl.shape.shape(ctx, target, ir, f"{name}_num_keys", k, 2)
        k_pos = impl.arange.arange(ctx, target, ir, f"{name}_k_pos", 0, num_keys, 1)
        q_pos = cast_trt_tensor(ctx, q_pos, k_pos.dtype, f"{name}_q_pos_cast", target, ir)
        rows = impl.unsqueeze.unsqueeze(ctx, target, ir, f"{name}_rows", q_pos, 1)
        cols = impl.unsqueeze.unsqueeze(ctx, target, ir, f"{name}_cols", k_pos, 0)
        distance = impl.elementwise.sub(ctx, target, ir, f"{name}_distance", rows, cols)
        mask = impl.elementwise.ge(ctx, target, ir, f"{name}_causal", distance, 0)
        if window > 0:
            in_window = impl.elementwise.lt(ctx, target, ir, f"{name}_in_window", distance, window)
            mask = impl.elementwise.logical_and(ctx, target, ir, f"{name}_window", mask, in_window)
        return mask

    def attend(ctx, target, name, q, k, v, mask, scale):
        out = impl.attention.scaled_dot_product_attention(
            ctx, target, SourceIR.ATEN, name, q, k, v, attn_mask=mask, scale=scale
        )
        return impl.permutation.permute(ctx, target, SourceIR.ATEN, f"{name}_sequence_major", out, [0, 2, 1, 3])

    @dynamo_tensorrt_converter(torch.ops.tllm.attention.default, supports_dynamic_shapes=True)
    def _attention(ctx, target, args, kwargs, name):
        q, k, v, scale, window = args
        ir = SourceIR.ATEN
        # Lower-right alignment: the Sq queries sit at positions Sk - Sq ... Sk - 1.
        num_keys = impl.shape.shape(ctx, target, ir, f"{name}_sk", k, 2)
        num_queries = impl.shape.shape(ctx, target, ir, f"{name}_sq", q, 2)
        first = impl.elementwise.sub(ctx, target, ir, f"{name}_first", num_keys, num_queries)
        q_pos = impl.arange.arange(ctx, target, ir, f"{name}_q_pos", first, num_keys, 1)
        return attend(ctx, target, name, q, k, v, visible(ctx, target, name, q_pos, k, window), scale)

    @dynamo_tensorrt_converter(torch.ops.tllm.cached_attention.default, supports_dynamic_shapes=True)
    def _cached_attention(ctx, target, args, kwargs, name):
        q, k_cache, v_cache, mask, scale = args
        return attend(ctx, target, name, q, k_cache, v_cache, mask, scale)


def tensor_parallel_settings():
    """Compile settings for a sharded graph (torch_tensorrt 2.13): its functional collectives
    become TensorRT's NCCL layers (TensorRT >= 10.16), or TensorRT-LLM's NCCL plugins (found
    through TRTLLM_PLUGINS_PATH); with neither, they run in PyTorch between engines."""
    if not tensor_parallel.active():
        return {}
    import torch_tensorrt.distributed
    from torch_tensorrt._features import ENABLED_FEATURES

    torch_tensorrt.distributed.setup_nccl_for_torch_tensorrt()  # (pip NCCL's library, where it is one)
    if not (ENABLED_FEATURES.native_trt_collectives or ENABLED_FEATURES.trtllm_for_nccl):
        log("note: this TensorRT has no NCCL collectives (10.16+ has them; or set TRTLLM_PLUGINS_PATH to "
            "TensorRT-LLM's plugins): the all-reduces run in PyTorch between engines")
    return {"use_distributed_mode_trace": True}
