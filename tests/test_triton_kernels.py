"""The Triton kernels (``tllm::decode_attention``, ``tllm::gated_down`` and its graph rewrite) on
CPU under Triton's interpreter, each in a subprocess that sets TRITON_INTERPRET before triton
loads (skipped where triton is not installed; the GPU tests run the compiled kernels)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

GATED_DOWN = """
import torch
import decode_attention
import gated_down
from generate import prefill
from tiny import PROMPT, build, tiny_pair

# The interpreter can neither time autotuning candidates nor ask a GPU for its SM count.
partial_sums = gated_down.partial_sums
gated_down.partial_sums = lambda g, w, gelu, sms: partial_sums(g, w, gelu, sms, tile=(16, 128))
decode_attention.num_sms = gated_down.num_sms = lambda index: 132

torch.manual_seed(0)
for rows, inner, batch, gelu in [(96, 400, 1, False), (64, 1024, 2, True), (40, 300, 1, False)]:
    gate_up, weight = torch.randn(batch, 2 * inner), torch.randn(rows, inner) / inner**0.5
    gate, up = gate_up[:, :inner], gate_up[:, inner:]
    act = torch.nn.functional.gelu(gate, approximate="tanh") if gelu else torch.nn.functional.silu(gate)
    partial = torch.ops.tllm.gated_down(gate_up, weight, gelu)
    torch.testing.assert_close(partial.sum(0), (act * up) @ weight.t())
    # the PDL twin's fake (what Inductor allocates for it) must describe the real output
    fake = gated_down._gated_down_pdl_fake(gate_up, weight, gelu)
    assert (fake.shape, fake.stride(), fake.dtype) == (partial.shape, partial.stride(), partial.dtype)

for family, layers in [("llama", 2), ("gemma3", 6), ("gpt2", 0)]:
    model, _ = tiny_pair(family)
    sequence = torch.randint(0, 512, (1, PROMPT + 6))
    want, gen = (build(model, sequence[:, :PROMPT], "static_v2") for _ in range(2))
    widest, gated_down.MAX_ROWS = gated_down.MAX_ROWS, 0  # narrower than any layer: nothing to rewrite
    assert gated_down.use_gated_down(gen.graph) == 0
    gated_down.MAX_ROWS = widest
    rewritten = gated_down.use_gated_down(gen.graph)
    assert rewritten == layers, (family, rewritten)
    with torch.no_grad():
        for g in (want, gen):
            g.logits = [prefill(g, sequence[:, :PROMPT])[0]] + [g.step(sequence[:, j : j + 1])[0] for j in range(PROMPT, sequence.shape[1])]
    for a, b in zip(want.logits, gen.logits):
        torch.testing.assert_close(b, a)
print("ok")
"""


DECODE_ATTENTION = """
import torch
import triton.runtime.interpreter as interpreter
import decode_attention
import register_sdpa

# Triton 3.6's interpreter holds a scalar as a one-element array, which numpy 2.4 no longer
# turns into an int: a loop bounded by a loaded value (the new token's position) needs this.
patch_tensor = interpreter._patch_lang_tensor
def _patch_lang_tensor(tensor, scope):
    patch_tensor(tensor, scope)
    scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.item()))
interpreter._patch_lang_tensor = _patch_lang_tensor
decode_attention.num_sms = lambda index: 132  # the interpreter has no GPU to ask
torch.manual_seed(0)
# batch, query heads, K/V heads, head dim, cache length, new token's position, window, keys per split
for b, hq, hkv, d, keys, position, window, per_split in [
        (1, 4, 2, 64, 512, 400, 0, 256),    # splits of four tiles each, grouped heads
        (2, 8, 2, 128, 192, 100, 64, 32),   # sliding window narrower than the visible keys
        (1, 3, 1, 256, 96, 95, 0, 32),      # a 256-wide head (Gemma 3), 3 heads per K/V head
        (1, 2, 2, 80, 300, 299, 0, 1024),   # one split over five tiles, the last one partial; head dim 80
        (1, 2, 2, 64, 64, 0, 0, 32),        # the first position: one visible key
]:
    q = torch.randn(b, hq, 1, d)
    k, v = (torch.randn(b, hkv, keys, d) for _ in range(2))
    position = torch.tensor([position])
    got = decode_attention.attend(q, k, v, position, d**-0.5, window, min_keys_per_split=per_split)
    mask = register_sdpa.visible_keys(position, keys, window)
    want = register_sdpa._masked_gqa_sdpa(q, k, v, mask, d**-0.5).transpose(1, 2)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    # the PDL twin's fake (what Inductor allocates for it) must describe the real output
    fake = decode_attention._decode_attention_pdl_fake(q, k, v, position, d**-0.5, window)
    assert (fake.shape, fake.stride(), fake.dtype) == (got.shape, got.stride(), got.dtype)
print("ok")
"""


def interpret(code):
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, TRITON_INTERPRET="1",
               PYTHONPATH=os.pathsep.join([str(root), str(root / "tests"), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def test_decode_attention_matches_masked_sdpa():
    """The split-K decode kernel against masked SDPA in FP32: several splits of several tiles
    and their merge, one split, grouped heads, a sliding window, the first position, head dims
    of 64, 80 (padded), 128 and 256; its PDL twin's fake output matches the real one."""
    interpret(DECODE_ATTENTION)


def test_gated_down_and_its_rewrite_match_pytorch():
    """The kernel against PyTorch (SiLU and tanh-GELU, masked edges, several splits, batch 2),
    with its PDL twin's fake output matching the real one; then a tiny Llama and Gemma 3 whose decode steps go through it give the unrewritten
    graph's logits, and GPT-2 (no gated MLP) and layers wider than MAX_ROWS are left alone."""
    interpret(GATED_DOWN)
