"""Pre-quantized FP8 checkpoints (prequantized.py), each made from one tiny random Llama by its
format's own library: compressed-tensors (FP8 dynamic, per channel), NVIDIA ModelOpt
(FP8_DEFAULT_CFG then export_hf_checkpoint: per tensor) and transformers' fine-grained FP8
(its Fp8Quantize: 128x128 blocks). Each loads with its FP8 weights kept as FP8, equal to that
library's own dequantization; generates through every cache mode as the same layers in the
Hugging Face model do; loads its build from the build cache; and a scheme we do not read ends
in one line."""

import copy
import json
import shutil

import pytest
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_quantize import graph_logits, stepwise_logits

import build_cache
import config
import models
import prequantized
import quantize
import run_llm
from export_llm import LastLogits
from pipeline import build_generator
from tiny import CACHE_MODES, CPU, DECODE, PROMPT
from utils import UserError

# widths that are multiples of 128: fine-grained FP8 quantizes whole 128 x 128 blocks
SHAPE = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=512, tie_word_embeddings=False)
FORMATS = ("compressed-tensors", "modelopt", "fp8-block")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("base")
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(transformers.LlamaConfig(**SHAPE)).to(torch.bfloat16).save_pretrained(folder)
    return folder


def compressed_tensors_fp8(base, folder):
    """FP8_DYNAMIC (weights per channel, activations per token) with compressed-tensors' own
    scale computation and compressor (its observers live in another package)."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import QuantizationConfig, apply_quantization_config, preset_name_to_scheme
    from compressed_tensors.quantization.utils.helpers import calculate_qparams, is_module_quantized

    model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
    scheme = QuantizationConfig(config_groups={"group_0": preset_name_to_scheme("FP8_DYNAMIC", ["Linear"])},
                                ignore=["lm_head"])
    apply_quantization_config(model, scheme)
    with torch.no_grad():
        for module in model.modules():
            if is_module_quantized(module):
                w = module.weight.float()
                scale, _ = calculate_qparams(w.amin(1, keepdim=True), w.amax(1, keepdim=True),
                                             module.quantization_scheme.weights)
                module.weight_scale.copy_(scale.reshape(module.weight_scale.shape))
    compressor = ModelCompressor.from_pretrained_model(model)
    compressor.compress_model(model)
    model.save_pretrained(folder)
    compressor.update_config(folder)


def modelopt_fp8(base, folder):
    import modelopt.torch.quantization as mtq
    from modelopt.torch.export import export_hf_checkpoint

    model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
    torch.manual_seed(0)
    calibration = torch.randint(0, SHAPE["vocab_size"], (2, 16))
    with torch.no_grad():
        mtq.quantize(model, copy.deepcopy(mtq.FP8_DEFAULT_CFG), lambda m: m(calibration))
    export_hf_checkpoint(model, export_dir=folder)


def fine_grained_fp8(base, folder):
    """transformers' own block quantizer over each Linear weight but the LM head (its
    on-the-fly quantization needs a GPU)."""
    from transformers.integrations.finegrained_fp8 import Fp8Quantize

    class Quantizer:
        quantization_config = transformers.FineGrainedFP8Config()

    quantize_one = Fp8Quantize(Quantizer())._quantize_one
    shutil.copytree(base, folder, dirs_exist_ok=True)
    tensors = {}
    for key, value in load_file(base / "model.safetensors").items():
        tensors.update(quantize_one(key, value) if key.endswith("_proj.weight") else {key: value})
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    data = json.loads((folder / "config.json").read_text())
    data["quantization_config"] = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                   "weight_block_size": [128, 128]}
    (folder / "config.json").write_text(json.dumps(data))


MAKERS = {"compressed-tensors": compressed_tensors_fp8, "modelopt": modelopt_fp8, "fp8-block": fine_grained_fp8}


@pytest.fixture(scope="module")
def checkpoints(base, tmp_path_factory):
    folders = {}
    for name, make in MAKERS.items():
        folders[name] = tmp_path_factory.mktemp(name)
        make(base, folders[name])
    return folders


def load(folder):
    model_config = models.load_config(str(folder), False)
    model, _, _ = models.load_model(str(folder), False, torch.float32, CPU, with_tokenizer=False, config=model_config)
    run = config.resolve(model_config.model_type, device="cpu", precision="FP32", backend="eager",
                         prequantized=prequantized.scheme(model_config))
    return model, run


def library_weights(name, folder):
    """{Linear name: the weight as the format's own library dequantizes it}, FP32."""
    if name == "modelopt":
        from modelopt.torch.export.quant_utils import from_quantized_weight

        with safe_open(str(folder / "model.safetensors"), "pt") as f:
            return {k[: -len(".weight")]: from_quantized_weight(f.get_tensor(k), f.get_tensor(k + "_scale"), "fp8",
                                                                 torch.float32)
                    for k in f.keys() if k.endswith("_proj.weight")}
    kwargs = {"quantization_config": transformers.CompressedTensorsConfig(dequantize=True)} \
        if name == "compressed-tensors" else {}  # (fine-grained FP8 dequantizes on a CPU by itself)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kwargs)
    return {n: m.weight.float() for n, m in model.named_modules() if n.endswith("_proj")}


@pytest.mark.parametrize("name", FORMATS)
def test_fp8_weights_stay_fp8_and_equal_the_librarys_dequantization(name, checkpoints):
    model, run = load(checkpoints[name])
    assert run.prequantized == name and run.quantization["checkpoint"] == name
    reference = library_weights(name, checkpoints[name])
    assert len(reference) == 2 * 7
    for module_name, want in reference.items():
        module = model.get_submodule(module_name)
        weight, scale, extra, kind = module.weight.prequantized
        assert weight.dtype == quantize.FP8 and module.weight.untyped_storage().nbytes() <= 4  # no 16-bit copy
        got = quantize.dequantize(weight, scale, extra, kind, torch.float32)
        # compressed-tensors multiplies in BF16, the scale's type; the others exactly
        tol = dict(rtol=8e-3, atol=1e-4) if name == "compressed-tensors" else dict(rtol=0, atol=0)
        torch.testing.assert_close(got, want, **tol)


@pytest.mark.parametrize("cache", CACHE_MODES)
@pytest.mark.parametrize("name", FORMATS)
def test_generation_matches_the_same_layers_in_transformers(name, cache, checkpoints):
    model, run = load(checkpoints[name])
    run = config.resolve("llama", device="cpu", precision="FP32", backend="eager", cache=cache,
                         prequantized=run.prequantized)
    torch.manual_seed(1)
    sequence = torch.randint(0, SHAPE["vocab_size"], (1, PROMPT + DECODE))
    gen, _, _ = build_generator(LastLogits(model), run_llm.text_inputs(1, SHAPE["vocab_size"], CPU), (1, 1), run,
                                PROMPT + DECODE, (sequence[:, :PROMPT], None))
    reference = copy.deepcopy(model)
    assert quantize.quantize_model(reference, run).startswith("14 products")
    with torch.no_grad():
        want = stepwise_logits(reference, sequence) if cache else reference(sequence).logits[:, PROMPT - 1 : -1]
    errors = (graph_logits(gen, sequence) - want).abs().amax((0, 2))
    if cache:
        assert errors.max() < 1e-4, errors
    else:  # every step a prompt, its activations quantized to FP8: float noise may flip a rounding
        assert (errors < 1e-4).float().mean() > 0.9 and errors.max() < 0.05, errors


def test_a_build_of_a_prequantized_model_loads_from_the_build_cache(checkpoints):
    folder = checkpoints["compressed-tensors"]
    sequence = torch.randint(0, SHAPE["vocab_size"], (1, PROMPT + DECODE))
    runs = []
    for _ in range(2):
        model, run = load(folder)
        gen, _, cached = build_generator(LastLogits(model), run_llm.text_inputs(1, SHAPE["vocab_size"], CPU), (1, 1),
                                         run, PROMPT + DECODE, (sequence[:, :PROMPT], None), {"test": "prequantized"})
        runs.append((cached["status"], graph_logits(gen, sequence)))
    assert [status for status, _ in runs] == ["built", "loaded"]
    assert torch.equal(runs[0][1], runs[1][1])
    entry = build_cache.root() / cached["key"]
    assert (entry / "graphs.pkl").stat().st_size < 2 * 7 * 256 * 512  # the FP8 weights by name, not by value


def test_the_cli_runs_one_and_says_so(checkpoints, tmp_path):
    out = tmp_path / "run.json"
    run_llm.main(["--model", str(checkpoints["fp8-block"]), "--benchmark", "--isl", "16", "--num_tokens", "4",
                  "--iterations", "1", "--warmup", "0", "--output_json", str(out)])
    record = json.loads(out.read_text())
    assert record["quantization"]["checkpoint"] == "fp8-block" and "quantize" in record["passes"]["export"]


@pytest.mark.parametrize("quantization,message", [
    ({"quant_method": "gptq", "bits": 4}, "quantized with 'gptq': not read"),
    ({"quant_method": "modelopt", "quant_algo": "NVFP4"}, "ModelOpt NVFP4: not read"),
    ({"quant_method": "compressed-tensors", "format": "pack-quantized",
      "config_groups": {"group_0": {"weights": {"num_bits": 4, "type": "int", "strategy": "group"}}}},
     "compressed-tensors pack-quantized, 4-bit int weights per group: not read"),
])
def test_a_scheme_we_do_not_read_is_one_line(quantization, message, base, tmp_path):
    shutil.copytree(base, tmp_path, dirs_exist_ok=True)
    data = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**data, "quantization_config": quantization}))
    with pytest.raises(UserError, match=message):
        run_llm.parse(["--model", str(tmp_path), "--benchmark"])


def test_a_prequantized_model_takes_no_quant_format(checkpoints):
    with pytest.raises(UserError, match="already quantized .compressed-tensors FP8 checkpoint.: drop --quant_format"):
        run_llm.parse(["--model", str(checkpoints["compressed-tensors"]), "--quant_format", "int4"])
