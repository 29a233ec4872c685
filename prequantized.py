"""Pre-quantized FP8 checkpoints, loaded as they are: each quantized Linear keeps the file's FP8
weight and scales, and the ``quantize`` pass multiplies by them (as ``--quant_format fp8``
does by weights it quantized itself) instead of quantizing 16-bit weights.

Read:
- ModelOpt's FP8 (``quant_method: "modelopt"``, ``quant_algo: "FP8"``; also hf_quant_config.json):
  ``weight`` FP8 and ``weight_scale``, one per tensor;
- compressed-tensors FP8 (``quant_method: "compressed-tensors"``, ``float-quantized``, 8-bit
  float weights per channel or per tensor), as published for Llama 3.1: ``weight`` FP8 and
  ``weight_scale`` [N, 1] or [1];
- transformers' fine-grained FP8 (``quant_method: "fp8"`` with ``weight_block_size``), as
  published for Qwen3: ``weight`` FP8 and ``weight_scale_inv``, one per block.
Activations follow ``--quant_format fp8``: a prompt's are quantized per token at run time
(per-tensor and block scales: multiplied by the dequantized weight instead), a decode step's
stay 16-bit; a checkpoint's static input scales are not used. Any other scheme ends in one
line that names it.
"""

import copy
import json
from pathlib import Path

import torch
from safetensors import safe_open
from transformers.initialization import no_init_weights

from utils import UserError, log

FP8 = torch.float8_e4m3fn
READ = "ModelOpt FP8, compressed-tensors FP8 (float-quantized, per channel or tensor), transformers' fine-grained FP8"


def _quantization_config(config):
    q = getattr(config, "quantization_config", None)
    return q.to_dict() if hasattr(q, "to_dict") else q


def scheme(config):
    """The checkpoint's scheme ("modelopt", "compressed-tensors" or "fp8-block"), None for a
    16-bit one; one line for a scheme not read."""
    q = _quantization_config(config)
    if not q:
        return None
    method = q.get("quant_method")
    if method == "gguf":  # a GGUF file's weights, dequantized when it was read (the bundled model's folder)
        return None
    if method == "modelopt":
        if q.get("quant_algo") != "FP8":
            raise UserError(f"this checkpoint is ModelOpt {q.get('quant_algo')}: not read (read: {READ})")
        return "modelopt"
    if method == "compressed-tensors":
        for group in q.get("config_groups", {}).values():
            weights = group.get("weights") or {}
            described = (f"{group.get('format') or q.get('format')}, {weights.get('num_bits')}-bit "
                         f"{weights.get('type')} weights per {weights.get('strategy')}")
            if (group.get("format") or q.get("format")) != "float-quantized" or weights.get("num_bits") != 8 or \
                    weights.get("type") != "float" or weights.get("strategy") not in ("channel", "tensor"):
                raise UserError(f"this checkpoint is compressed-tensors {described}: not read (read: {READ})")
        return "compressed-tensors"
    if method == "fp8" and q.get("weight_block_size"):
        return "fp8-block"
    raise UserError(f"this checkpoint is quantized with {method!r}: not read (read: {READ})")


def _tensors(folder, device):
    tensors = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(path), "pt", device=str(device)) as f:
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
    return tensors


def load(folder, config, device, auto_class, **kwargs):
    """The model of a pre-quantized checkpoint ``folder``: its 16-bit tensors loaded, and each
    FP8 Linear's weight a placeholder (a zero expanded to the weight's shape, no memory) whose
    ``prequantized`` attribute holds what ``quantize.quantized_linear`` reads (``of`` gives the
    same from the module); the FP8 weight and its scale are the module's buffers ``weight_fp8``
    and ``weight_scale`` (so the build cache refers to them by name). ``kwargs``: from_config's (dtype, attention)."""
    name, dtype = scheme(config), kwargs["dtype"]
    block = _quantization_config(config).get("weight_block_size")
    config = copy.deepcopy(config)
    del config.quantization_config
    with torch.device(device), no_init_weights():
        model = auto_class.from_config(config, **kwargs)
    tensors = _tensors(folder, device)
    placeholders = set()
    for module_name, module in model.named_modules():
        weight = tensors.get(f"{module_name}.weight")
        if not isinstance(module, torch.nn.Linear) or weight is None or weight.dtype != FP8:
            continue
        del tensors[f"{module_name}.weight"]
        if name == "fp8-block":
            scale, kind = tensors.pop(f"{module_name}.weight_scale_inv").float(), f"fp8_block:{block[0]}x{block[1]}"
        else:
            scale, kind = tensors.pop(f"{module_name}.weight_scale").float().reshape(-1).expand(weight.shape[0]), "fp8"
        module.register_buffer("weight_fp8", weight)
        module.register_buffer("weight_scale", scale.contiguous())
        placeholder = torch.nn.Parameter(torch.zeros((), dtype=dtype, device=device).expand(weight.shape),
                                         requires_grad=False)
        placeholder.prequantized = (module.weight_fp8, module.weight_scale, None, kind)
        module.weight, module.prequantized_kind = placeholder, kind
        placeholders.add(f"{module_name}.weight")
    if not placeholders:
        raise UserError(f"{folder}: its config says {name} but it holds no FP8 Linear weight")
    unused = [k for k in tensors if k.endswith(("input_scale", "k_scale", "v_scale", "weight_scale"))]
    for key in unused:
        del tensors[key]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    tied = {k for k in missing if k.endswith("lm_head.weight") and config.get_text_config().tie_word_embeddings}
    kept = {f"{k.rpartition('.')[0]}.{buffer}" for k in placeholders for buffer in ("weight_fp8", "weight_scale")}
    missing = [k for k in missing if k not in placeholders | kept and k not in tied]
    if missing or unexpected:
        raise UserError(f"{folder}: the checkpoint does not fit its config (missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]})")
    log(f"pre-quantized {name}: {len(placeholders)} FP8 Linears kept as FP8"
        + (f" (static activation and KV scales not used: {len(unused)})" if unused else ""))
    return model


def of(module):
    """(weight, scale, extra, kind) of a Linear loaded from a pre-quantized checkpoint, or None
    (read from its buffers: a copy of the model keeps them, not the placeholder's attribute)."""
    kind = getattr(module, "prequantized_kind", None)
    return None if kind is None else (module.weight_fp8, module.weight_scale, None, kind)


def check_hf_quant_config(folder):
    """A folder with ModelOpt's hf_quant_config.json but no quantization_config in its
    config.json (older exports): one line, rather than weights read as 16-bit."""
    path = Path(folder) / "hf_quant_config.json"
    if path.is_file():
        algo = json.loads(path.read_text()).get("quantization", {}).get("quant_algo")
        raise UserError(f"{folder}: ModelOpt {algo} checkpoint without a quantization_config in config.json; "
                        "re-export it with ModelOpt 0.47 or later")
