"""The run configuration: ``config.resolve`` fills in every default once (precision per device
and model, backend, lengths, which decode kernels can run, baselines) and refuses bad
combinations; the RunConfig it returns is frozen; ``passes.plan`` says which graph passes run for
a config; ``run_llm.parse`` gives what ``resolve`` gives for the same values."""

import dataclasses

import pytest
import torch

import config
import passes
import run_llm
from config import RunConfig, resolve
from utils import UserError


def test_cpu_defaults():
    run = resolve("llama", device="cpu")
    assert (run.device, run.precision, run.dtype, run.backend, run.num_tokens) == ("cpu", "FP32", torch.float32,
                                                                                  "eager", 64)
    assert not run.on_cuda and run.cache == "static_v2" and run.baselines == ("hf_generate",)
    assert (run.isl, run.iterations, run.warmup) == (2048, 5, 1)
    assert resolve("llama", device="cpu", benchmark=True).num_tokens == 128
    assert resolve("llama", device="cpu", benchmark=True, num_tokens=7).num_tokens == 7
    assert resolve("llama", device="cpu", backend="auto").backend == "eager"
    assert resolve("llama", device="cpu", backend="inductor").backend == "inductor"
    assert resolve("gemma3_text", device="cpu").precision == "FP32"
    assert resolve("llama", device="cpu", precision="BF16").dtype == torch.bfloat16


def test_triton_kernels_resolve_to_sdpa_on_cpu():
    run = resolve("llama", device="cpu", decode_attention="triton", gated_down=True)
    assert run.decode_attention == "sdpa" and not run.gated_down


def test_gpu_defaults(monkeypatch):
    """Precision per model on a GPU, and the Triton kernels where they run (no GPU needed: only
    the device check asks for one)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    llama = resolve("llama", device="cuda", backend="inductor")
    assert (llama.device, llama.precision, llama.decode_attention, llama.gated_down) == ("cuda", "FP16", "triton",
                                                                                          True)
    assert llama.on_cuda and llama.torch_device == torch.device("cuda")
    assert resolve("gemma3_text", device="cuda", backend="inductor").precision == "BF16"  # overflows in FP16
    assert resolve("qwen2_5_vl", device="cuda", backend="inductor", vision_language=True).precision == "BF16"
    sdpa = resolve("llama", device="cuda", backend="inductor", decode_attention="sdpa", gated_down=False)
    assert sdpa.decode_attention == "sdpa" and not sdpa.gated_down
    dynamic = resolve("llama", device="cuda", backend="inductor", cache="dynamic")  # no fixed decode shape
    assert dynamic.decode_attention == "sdpa" and not dynamic.gated_down


def test_baselines():
    def baselines(*names, **fields):
        return resolve("llama", device="cpu", benchmark=True, enable_pytorch_run=True, baselines=names,
                       **fields).baselines

    assert resolve("llama", device="cpu").baselines == ("hf_generate",)
    assert baselines("all") == config.BASELINES == ("hf_generate", "hf_compile", "no_cache")
    assert baselines("all", vision_language=True) == ("hf_generate", "hf_compile")  # no-cache loop: text only
    assert baselines("no_cache", "hf_generate", "no_cache") == ("no_cache", "hf_generate")
    with pytest.raises(UserError, match="--baseline no_cache is for text models"):
        baselines("no_cache", vision_language=True)


@pytest.mark.parametrize("fields,message", [
    (dict(prefill_chunk=16, cache="dynamic"), "--prefill_chunk needs --cache static_v2"),
    (dict(prefill_chunk=16, cache="static_v1"), "--prefill_chunk needs --cache static_v2"),
    (dict(cudagraph=True, cache="static_v1"), "--cudagraph needs --cache static_v2"),
    (dict(cudagraph=True, cache=""), "--cudagraph needs --cache static_v2"),
    (dict(cudagraph=True, device="cpu"), "--cudagraph needs a CUDA device"),
])
def test_bad_combinations_raise(fields, message):
    with pytest.raises(UserError, match=message):
        resolve("llama", **{"device": "cpu", **fields})


def test_config_is_frozen():
    run = resolve("llama", device="cpu")
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.precision = "BF16"
    assert dataclasses.replace(run, precision="BF16").precision == "BF16" and run.precision == "FP32"


def test_plan_for_inductor_cudagraph_static_v2_on_cuda_is_the_documented_one():
    run = RunConfig(backend="inductor", cudagraph=True, cache="static_v2", device="cuda", decode_attention="triton",
                    gated_down=True)
    plan = passes.plan(run)
    assert plan == {"export": ["next_token", "fuse_linears"],
                    "step": ["cache", "split_k_decode", "gated_down", "split_bias", "layer_split"],
                    "first": ["cache", "layer_split"]}
    doc = " ".join(passes.__doc__.split())
    assert (f"export: {', '.join(plan['export'])}; step graph: {', '.join(plan['step'])}; "
            f"first graph: {', '.join(plan['first'])} (and split_bias with --tune all)") in doc
    assert passes.plan(dataclasses.replace(run, tune="all"))["first"] == ["cache", "split_bias", "layer_split"]


def test_plan_on_cpu():
    eager = resolve("llama", device="cpu")
    assert passes.plan(eager) == {"export": ["next_token", "fuse_linears"], "step": ["cache"], "first": ["cache"]}
    assert passes.plan(dataclasses.replace(eager, cache="dynamic")) == {"export": ["next_token", "fuse_linears"],
                                                                        "step": ["cache"]}
    assert passes.plan(dataclasses.replace(eager, cache="")) == {"export": ["next_token", "fuse_linears"], "step": []}
    # Inductor on CPU: no CUDA-only pass, no layer split without CUDA graphs
    assert passes.plan(resolve("llama", device="cpu", backend="inductor"))["step"] == ["cache"]


def test_parse_gives_what_resolve_gives():
    argv = ["--model", "gpt2", "--random_weights", "--cache", "static_v1", "--num_tokens", "5", "--benchmark",
            "--isl", "16", "--iterations", "2", "--warmup", "0", "--enable_pytorch_run", "--baseline", "all"]
    want = resolve("gpt2", model="gpt2", random_weights=True, cache="static_v1", num_tokens=5, benchmark=True,
                   isl=16, iterations=2, warmup=0, enable_pytorch_run=True, baselines=("all",))
    assert run_llm.parse(argv) == want
    assert (want.isl, want.iterations, want.warmup, want.baselines) == (16, 2, 0, config.BASELINES)
    argv = ["--model", "gpt2", "--random_weights", "--no_chat_template", "--prompt", "hi", "--prefill_chunk", "4"]
    want = resolve("gpt2", model="gpt2", random_weights=True, chat_template=False, prompts=("hi",), prefill_chunk=4)
    assert run_llm.parse(argv) == want
    assert run_llm.parse(["--model", "gpt2", "--random_weights"]) == resolve("gpt2", model="gpt2",
                                                                             random_weights=True)
