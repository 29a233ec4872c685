"""Test helpers for the text models: tiny random-weight configs of each supported family
(derived from the bundled real configs, so family-specific fields such as rope scaling, biases,
q/k norm and sliding layers stay), the same weights under our attention op and under
transformers' SDPA, and the pipeline built from a RunConfig as run_llm.py builds it."""

import copy
import dataclasses
import json

import torch
import transformers

import config
import export_llm
import passes
import register_sdpa
import run_llm
from export_llm import LastLogits
from generate import prefill
from models import BUNDLED_CONFIGS
from pipeline import build_generator
from utils import PRECISIONS

SHRINK = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)

FAMILIES = {
    "gpt2": ("gpt2", dict(n_embd=64, n_layer=2, n_head=4, n_positions=256, vocab_size=512)),
    "llama": ("meta-llama/Llama-3.2-1B-Instruct", dict(SHRINK, head_dim=16, vocab_size=512)),
    "qwen2": ("Qwen/Qwen2.5-0.5B-Instruct", dict(SHRINK, vocab_size=512)),
    "qwen3": ("Qwen/Qwen3-0.6B", dict(SHRINK, head_dim=32, vocab_size=512)),  # head_dim != hidden/heads
    # Layers 0-4 slide over 16 positions, layer 5 is global: a prompt of 24 crosses the window.
    "gemma3": (
        "google/gemma-3-1b-it",
        dict(SHRINK, num_hidden_layers=6, head_dim=16, sliding_window=16, query_pre_attn_scalar=16, vocab_size=512,
             layer_types=None),
    ),
}
CACHE_MODES = ["static_v2", "static_v1", "dynamic", ""]
PROMPT, DECODE = 24, 40  # Gemma's tiny sliding window is 16: the prompt and the decode cross it
CPU = torch.device("cpu")
TOL = 1e-4
PRECISION_OF = {dtype: name for name, dtype in PRECISIONS.items()}


def tiny_config(family, **changes):
    """``changes``: config fields to set on top of the family's tiny overrides."""
    model_id, overrides = FAMILIES[family]
    data = json.loads(BUNDLED_CONFIGS[model_id].read_text())
    data.update(overrides, **changes)
    data = {k: v for k, v in data.items() if v is not None}
    return transformers.CONFIG_MAPPING[data["model_type"]].from_dict(data)


def four_layers(family):
    """Config changes giving a tiny model of ``family`` at least four layers (Gemma's has six)."""
    return {"gpt2": {"n_layer": 4}, "gemma3": {}}.get(family, {"num_hidden_layers": 4})


def tiny_pair(family, dtype=torch.float32, device=CPU, **changes):
    """(model with our attention op in ``dtype``, the same weights under transformers' SDPA in FP32);
    ``changes``: config fields to set."""
    config = tiny_config(family, **changes)
    torch.manual_seed(0)
    ref = transformers.AutoModelForCausalLM.from_config(
        copy.deepcopy(config), attn_implementation="sdpa", dtype=torch.float32
    ).eval()
    ours = transformers.AutoModelForCausalLM.from_config(
        copy.deepcopy(config), attn_implementation=register_sdpa.ATTN_IMPLEMENTATION, dtype=dtype
    ).eval()
    ours.load_state_dict(ref.state_dict())
    ours, ref = ours.to(device), ref.to(device)
    ref.generation_config.eos_token_id = None  # tiny vocabularies don't hold the real EOS ids
    return ours, ref


def run_config(model, device, cache="static_v2", backend="eager", **fields):
    """A RunConfig for ``model`` (its dtype as the precision), resolved as the CLI resolves one."""
    return config.resolve(model.config.model_type, device=str(device), precision=PRECISION_OF[model.dtype],
                          backend=backend, cache=cache, **fields)


def build(model, prompt, cache, backend="eager", chunk=0, max_len=PROMPT + DECODE, **fields):
    """The Generator run_llm.py builds for ``model``, warmed up on ``prompt`` ``[B, S]``."""
    run = run_config(model, prompt.device, cache, backend, prefill_chunk=chunk, batch_size=len(prompt), **fields)
    make_inputs = run_llm.text_inputs(len(prompt), model.config.vocab_size, prompt.device)
    gen, _, _ = build_generator(LastLogits(model), make_inputs, (1, 1), run, max_len, (prompt, None))
    return gen


def teacher_forced_errors(gen, ref, sequence, chunk=0):
    """Max |logit difference| at the prefill and at each decode step, feeding ``sequence``."""
    with torch.no_grad():
        want = ref(sequence).logits
        steps = [prefill(gen, sequence[:, :PROMPT], chunk=chunk)]
        steps += [gen.step(sequence[:, j : j + 1]) for j in range(PROMPT, sequence.shape[1])]
    errors = []
    for j, (logits, token) in enumerate(steps, start=PROMPT - 1):
        assert torch.equal(token, logits.argmax(-1))  # the graph's token is its logits' argmax
        errors.append((logits - want[:, j]).abs().max().item())
    return errors


def rewritten_graph(model, cache, max_len, backend="eager"):
    """The model's exported graph after the passes run_llm.py applies for ``backend`` (batch 1,
    the step graph; TensorRT's is the functional form), before compiling."""
    run = run_config(model, CPU, cache, "eager")
    if backend == "tensorrt":  # resolve() refuses TensorRT without a GPU; the passes only read the name
        run = dataclasses.replace(run, backend="tensorrt")
    make_inputs = run_llm.text_inputs(1, model.config.vocab_size, CPU)
    gm = export_llm.export_graph(LastLogits(model), make_inputs(2), (1, 1), max_len)
    graph = passes.Graph(run, max_len)
    gm, _ = passes.run("export", gm, graph)
    gm, _ = passes.run("graph", gm, graph)
    return gm
