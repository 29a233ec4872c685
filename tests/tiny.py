"""Tiny random-weight configs of each supported text family, derived from the bundled real
configs so that family-specific fields (rope scaling, biases, q/k norm, sliding layers) stay."""

import json

import transformers

from models import BUNDLED_CONFIGS

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


def tiny_config(family, **changes):
    """``changes``: config fields to set on top of the family's tiny overrides."""
    model_id, overrides = FAMILIES[family]
    data = json.loads(BUNDLED_CONFIGS[model_id].read_text())
    data.update(overrides, **changes)
    data = {k: v for k, v in data.items() if v is not None}
    return transformers.CONFIG_MAPPING[data["model_type"]].from_dict(data)
