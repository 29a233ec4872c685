"""--baseline torchao (torchao_baseline.py): which runs config.resolve refuses in one line and
which ``all`` takes it into, the torchao config each product kind maps to, the pin, and one real
run on CPU (INT8 weight-only on a tiny Llama) through run_llm.py: its record, its CSV row and a
model left 16-bit afterwards. The torchao parts skip where torchao is not installed."""

import csv
import dataclasses
import json
from pathlib import Path

import pytest
import torch
import transformers

import config
import run_llm
import torchao_baseline
from config import RunConfig, resolve
from tiny import tiny_config
from utils import UserError

BENCH = dict(benchmark=True, enable_pytorch_run=True)


def baselines(*names, model_type="llama", **fields):
    return resolve(model_type, **{"device": "cpu", "baselines": names, **BENCH, **fields}).baselines


@pytest.mark.parametrize("fields,message", [
    (dict(), "--baseline torchao: it quantizes the model as --quant_format does: give --quant_format"),
    (dict(quant_format="int4"), "torchao's INT4 kernels need a CUDA GPU"),
    (dict(quant_format="fp8"), "torchao's FP8 W8A8 kernels need a CUDA GPU"),
    (dict(quant_format="int8", model_type="gpt2"), "GPT-2's are Conv1D"),
    (dict(quant_format="int8", weight_only=True, vision_language=True), "it is for text models"),
])
def test_refused_in_one_line(fields, message):
    with pytest.raises(UserError, match=message):
        baselines("torchao", **fields)


def test_refused_where_no_torchao_counterpart_or_kernel(monkeypatch):
    """Runs that pass resolve's own checks only on other machines (TensorRT, a GPU)."""
    monkeypatch.setattr(torchao_baseline.importlib.util, "find_spec", lambda name: object())  # (installed or not)

    def problem(**fields):
        return torchao_baseline.problem(RunConfig(**fields), "llama", False)

    assert "nvfp4 (TensorRT on Blackwell) has no torchao counterpart" in problem(quant_format="nvfp4",
                                                                                 backend="tensorrt")
    assert "--backend tensorrt quantizes with ModelOpt" in problem(quant_format="fp8", backend="tensorrt")
    gpu = dict(backend="inductor", device="cuda")
    assert "add --precision BF16" in problem(quant_format="int4", precision="FP16", **gpu)
    assert problem(quant_format="int4", precision="BF16", **gpu) is None
    assert problem(quant_format="fp8", precision="FP16", **gpu) is None


def test_missing_torchao_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(torchao_baseline.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"^--baseline torchao: torchao is not installed: pip install torchao==0\.18"):
        baselines("torchao", quant_format="int8", weight_only=True)


def test_all_takes_torchao_only_with_a_format_it_runs_here(monkeypatch, capsys):
    assert baselines("all") == config.BASELINES  # 16-bit: no torchao
    assert baselines("all", quant_format="int4") == config.BASELINES
    assert "--baseline all leaves torchao out: torchao's INT4 kernels need a CUDA GPU" in capsys.readouterr().err
    with pytest.raises(UserError, match="--baseline torchao: torchao's INT4"):  # named, it is refused
        baselines("all", "torchao", quant_format="int4")
    monkeypatch.setattr(torchao_baseline.importlib.util, "find_spec", lambda name: object())
    assert baselines("all", quant_format="int8", weight_only=True) == (*config.BASELINES, "torchao")
    assert baselines("torchao", "all", quant_format="int8") == (*config.BASELINES, "torchao")
    assert baselines("torchao", "hf_compile", quant_format="int8") == ("torchao", "hf_compile")


def test_pin_is_the_requirements_one():
    lines = (Path(__file__).resolve().parent.parent / "requirements-dev.txt").read_text().split()
    assert torchao_baseline.PIN in lines


@pytest.mark.parametrize("kind,want", [
    ("fp8", "Float8DynamicActivationFloat8WeightConfig(activation_dtype=torch.float8_e4m3fn, "
            "weight_dtype=torch.float8_e4m3fn, granularity=[PerRow(dim=-1), PerRow(dim=-1)]"),
    ("fp8_wo", "Float8WeightOnlyConfig(weight_dtype=torch.float8_e4m3fn, set_inductor_config=True, version=2, "
               "granularity=PerRow(dim=-1))"),
    ("int8_wo", "Int8WeightOnlyConfig(group_size=None, granularity=PerRow(dim=-1)"),
    ("int8", "Int8DynamicActivationInt8WeightConfig(act_mapping_type=<MappingType.SYMMETRIC: 1>, "
             "weight_only_decode=False, granularity=PerRow(dim=-1)"),
    ("int4", "Int4WeightOnlyConfig(group_size=64, set_inductor_config=True, int4_packing_format='tile_packed_to_4d'"),
])
def test_recipe_per_kind(kind, want):
    """Per output channel (a row of W), as ours; W8A8 activations per token, symmetric."""
    pytest.importorskip("torchao", reason="torchao is not installed (pip install torchao==0.18.0)")
    assert repr(torchao_baseline.recipe(kind, 64)).startswith(want)


def test_quantized_leaves_the_model_as_it_was():
    """quantize_ converts in place: inside the block the Linears but the LM head are torchao's,
    after it the same 16-bit Parameters are back, the outputs as before, Inductor's options too."""
    pytest.importorskip("torchao", reason="torchao is not installed (pip install torchao==0.18.0)")
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(tiny_config("llama")).eval()
    run = resolve("llama", device="cpu", quant_format="int8", weight_only=True)
    ids = torch.randint(0, 512, (1, 8))
    before, weights = model(ids).logits, dict(model.named_parameters())
    inductor = torch._inductor.config.get_config_copy()
    with torchao_baseline.quantized(model, run) as record:
        kinds = {type(m.weight).__name__ for m in model.modules() if isinstance(m, torch.nn.Linear)}
        assert kinds == {"Int8Tensor", "Parameter"} and type(model.lm_head.weight) is torch.nn.Parameter
        assert record["precision"] == "FP32 int8 weight-only" and record["torchao"]["layers"] == 14
        assert record["torchao"]["config"].startswith("Int8WeightOnlyConfig(")
    with torchao_baseline.quantized(model, dataclasses.replace(run, quant_lm_head=True)) as record:  # (tied here)
        assert type(model.lm_head.weight).__name__ == "Int8Tensor" and record["torchao"]["layers"] == 15
        assert type(model.model.embed_tokens.weight) is torch.nn.Parameter and record["precision"].endswith("+head")
    after = dict(model.named_parameters())
    assert after.keys() == weights.keys() and all(after[name] is p for name, p in weights.items())
    assert torch.equal(model(ids).logits, before)
    assert torch._inductor.config.get_config_copy() == inductor


def test_int8_weight_only_run_on_cpu(tiny_llama_dir, tmp_path, capsys):
    """The whole path in this process: resolve, the pipeline, hf_compile and torchao, the record
    and the CSV row (its precision says the format; its floor counts the INT8 weights)."""
    pytest.importorskip("torchao", reason="torchao is not installed (pip install torchao==0.18.0)")
    out, table = tmp_path / "bench.json", tmp_path / "results.csv"
    run_llm.main(["--model", str(tiny_llama_dir), "--benchmark", "--isl", "8", "--num_tokens", "4", "--iterations",
                  "1", "--warmup", "0", "--quant_format", "int8", "--weight_only", "--enable_pytorch_run",
                  "--baseline", "hf_compile", "torchao", "--output_json", str(out), "--results_csv", str(table)])
    stdout, stderr = capsys.readouterr()
    assert "torchao: TTFT" in stderr and "torchao" in stdout
    data = json.loads(out.read_text())
    ours, torchao = data["baselines"]["hf_compile"], data["baselines"]["torchao"]
    assert torchao["tpot_p50_ms"] > 0 and torchao["torchao"]["version"] == "0.18.0"
    assert torchao["bytes_per_decode_step"] < ours["bytes_per_decode_step"]  # INT8 weights against FP32
    rows = {r["runner"]: r for r in csv.DictReader(table.open())}
    assert list(rows) == ["pipeline", "hf_compile", "torchao"]
    assert rows["torchao"]["precision"] == rows["pipeline"]["precision"] == "FP32 int8 weight-only"
    assert rows["hf_compile"]["precision"] == "FP32" and rows["torchao"]["cache"] == "hf"
