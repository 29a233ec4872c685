"""--baseline torchao: the run's --quant_format done by torchao instead of our quantize pass, on
Hugging Face's static cache + torch.compile (as the hf_compile baseline runs). torchao's
``quantize_`` converts the same layers ours does, every nn.Linear but the LM head (with
--quant_lm_head, that too), with the config of the run's product kind (quantize.kind_of):

  fp8      Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())
  fp8_wo   Float8WeightOnlyConfig()             (a scale per output channel, as ours)
  int8_wo  Int8WeightOnlyConfig()               (per output channel)
  int8     Int8DynamicActivationInt8WeightConfig()   (per-token activations, symmetric)
  int4     Int4WeightOnlyConfig(group_size=<the run's group>, int4_packing_format="tile_packed_to_4d")

INT4's default packing needs the mslk package (``Requires mslk >= 1.0.0``); tile_packed_to_4d is
tinygemm's, CUDA and BF16 only. FP8 W8A8 needs a CUDA GPU of compute capability 8.9 or more.
--quant_algo smoothquant runs as plain W8A8 here, said in a log line: torchao's SmoothQuant is a
prototype with its own calibration flow, and the speed of the products is what is compared.
"""

import contextlib
import importlib.util

import torch

import quantize
from utils import log

PIN = "torchao==0.18.0"  # as requirements-dev.txt


def problem(run, model_type, vision_language):
    """Why the torchao baseline cannot run for a resolved RunConfig, in a few words; None if it can."""
    if not run.quant_format:
        return "it quantizes the model as --quant_format does: give --quant_format fp8, int8 or int4"
    if run.quant_format == "nvfp4":
        return "--quant_format nvfp4 (TensorRT on Blackwell) has no torchao counterpart here"
    if run.backend == "tensorrt":
        return "--backend tensorrt quantizes with ModelOpt, not our products: compare on --backend inductor"
    if vision_language:
        return "it is for text models"
    if model_type == "gpt2":
        return "torchao's quantize_ converts nn.Linear layers, and GPT-2's are Conv1D"
    kind = quantize.kind_of(run)
    if kind in ("fp8", "int4") and not run.on_cuda:
        return f"torchao's {'FP8 W8A8' if kind == 'fp8' else 'INT4'} kernels need a CUDA GPU"
    if kind == "int4" and run.precision != "BF16":
        return "torchao's INT4 packing (tile_packed_to_4d) takes BF16 weights only: add --precision BF16"
    if importlib.util.find_spec("torchao") is None:
        return f"torchao is not installed: pip install {PIN}"
    return None


def recipe(kind, group=0):
    """torchao's config for a product kind (module docstring); ``group``: INT4's group size."""
    from torchao.quantization import (
        Float8DynamicActivationFloat8WeightConfig,
        Float8WeightOnlyConfig,
        Int4WeightOnlyConfig,
        Int8DynamicActivationInt8WeightConfig,
        Int8WeightOnlyConfig,
        PerRow,
    )

    if kind == "fp8":
        return Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())
    if kind == "int4":
        return Int4WeightOnlyConfig(group_size=group, int4_packing_format="tile_packed_to_4d")
    return {"fp8_wo": Float8WeightOnlyConfig, "int8_wo": Int8WeightOnlyConfig,
            "int8": Int8DynamicActivationInt8WeightConfig}[kind]()


@contextlib.contextmanager
def quantized(model, config):
    """The Hugging Face model with its Linears quantized by torchao while the block runs; yields
    the fields its benchmark record adds. quantize_ converts in place, so each Linear's 16-bit
    weight goes back afterwards: the model is left as the other baselines and the run found it."""
    import torchao
    from torchao.quantization import quantize_

    kind = quantize.kind_of(config)
    head = None if config.quant_lm_head else model.get_output_embeddings()
    weights = {m: m.weight for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head}
    quantization = {**quantize.recorded(config, model), "algo": "max"}  # (INT4: the group size our pass takes)
    ao_config = recipe(kind, quantization["group_size"] or 0)
    if config.quant_algo == "smoothquant":
        log("torchao baseline: INT8 W8A8 without SmoothQuant (torchao's is a prototype of its own); ours smooths")
    inductor = torch._inductor.config.get_config_copy()  # quantize_ sets torchao's Inductor options process-wide
    try:
        quantize_(model, ao_config, filter_fn=lambda module, _: module in weights)
        yield {"precision": f"{config.precision} {quantize.label(quantization)}",
               "torchao": {"version": torchao.__version__, "config": repr(ao_config), "layers": len(weights)}}
    finally:
        for module, weight in weights.items():
            module.weight = weight
            module.__dict__.pop("extra_repr", None)  # quantize_'s description of the quantized weight
        torch._inductor.config.load_config(inductor)
