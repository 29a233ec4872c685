"""Test helpers for the vision-language models: tiny random-weight configs of Qwen2.5-VL and
Eagle2 (derived from the bundled real configs, so the image geometry stays real), the families
built on them with the attention run_vlm.py gives them, and the run_vlm.py pipeline in process
for a RunConfig."""

import json

import torch
import transformers

import config
import eagle2
import models
import qwen_vl
import register_sdpa
import run_vlm
from generate import collect, prefill, steps

NEW_TOKENS = 24
# Our attention op in the language model, stock SDPA in the (bidirectional) vision tower.
QWEN_ATTENTION = {"": register_sdpa.ATTN_IMPLEMENTATION, "text_config": register_sdpa.ATTN_IMPLEMENTATION,
                  "vision_config": "sdpa"}


def tiny_qwen_config():
    """Qwen2.5-VL at toy width, real patch geometry (14 px patches, 2x2 merge, 112 px windows,
    so the sample image has 768 patches and 192 image tokens), and an M-RoPE split that
    covers the tiny head (8 rotary pairs: 2 temporal, 3 height, 3 width)."""
    data = json.loads(models.BUNDLED_CONFIGS["Qwen/Qwen2.5-VL-3B-Instruct"].read_text())
    data.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2)
    data["rope_scaling"] = {"type": "mrope", "mrope_section": [2, 3, 3]}
    data["vision_config"].update(depth=4, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                                 fullatt_block_indexes=[1, 3])
    return data


def tiny_eagle_config():
    """Eagle2 at toy width: 56 px tiles of 4x4 patches -> 4 tokens per tile after the shuffle."""
    data = json.loads(models.BUNDLED_CONFIGS["nvidia/Eagle2-2B"].read_text())
    data["force_image_size"] = 56
    data["vision_config"].update(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                 image_size=56)
    data["llm_config"].update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2)
    return data


def config_from(data):
    return transformers.CONFIG_MAPPING[data["model_type"]].from_dict(data)


def vlm_config(device="cpu", backend="eager", precision="FP32", **fields):
    """A resolved RunConfig for a VLM pipeline (the model type only sets defaults)."""
    return config.resolve("qwen2_5_vl", vision_language=True, device=device, backend=backend, precision=precision,
                          **fields)


def sample_image():
    """The bundled image run_vlm.py uses by default (448x336 px)."""
    return run_vlm.load_image(run_vlm.SAMPLE_IMAGE)


def tiny_qwen_model():
    """Tiny Qwen2.5-VL (seed 0, FP32, on the CPU) with transformers' eager attention: the reference."""
    torch.manual_seed(0)
    return transformers.Qwen2_5_VLForConditionalGeneration._from_config(
        config_from(tiny_qwen_config()), attn_implementation="eager", dtype=torch.float32
    ).eval()


def qwen_family(hf):
    """``qwen_vl.QwenVL`` on ``hf``, switched to the attention run_vlm.py gives it, with the offline tokenizer."""
    hf.set_attn_implementation(QWEN_ATTENTION)
    return qwen_vl.QwenVL(hf, models.load_tokenizer(None, hf.config), None)


def tiny_eagle_model():
    """Tiny Eagle2 (seed 0, FP32, on the CPU) with our attention op: the project's eager model."""
    torch.manual_seed(0)
    return eagle2.Eagle2Model.from_config(config_from(tiny_eagle_config()), register_sdpa.ATTN_IMPLEMENTATION,
                                          torch.float32)


def eagle_family(model):
    """``eagle2.Eagle2VL`` on ``model``, with the offline tokenizer."""
    return eagle2.Eagle2VL(model, models.load_tokenizer(None, model.config.llm_config), None)


def run_pipeline(vlm, run, num_tokens=NEW_TOKENS):
    """The run_vlm.py flow in process for the RunConfig ``run``: vision, export + passes, prefill,
    greedy. Returns the prompt ids, the first logits, every decode step's logits and the tokens."""
    input_ids = run_vlm.prompt_input_ids(vlm, run)
    mode = run.vision if run.vision != "auto" else vlm.default_vision
    gen, _, (embeds, positions), _, _, _ = run_vlm.build(vlm, run, input_ids, mode, input_ids.shape[1] + num_tokens)
    first_logits, first_token = prefill(gen, embeds, positions, run.prefill_chunk)
    logits = [first_logits]
    step = gen.step

    def record(x, position_ids=None):
        out = step(x, position_ids)
        logits.append(out[0])
        return out

    gen.step = record
    token_steps = steps(gen, first_token, num_tokens, vlm.embed_tokens, vlm.decode_positions)
    rows = collect(token_steps, [num_tokens] * len(embeds))
    tokens = torch.tensor(rows, device=first_token.device)
    return input_ids, logits, tokens
