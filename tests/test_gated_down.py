"""``tllm::gated_down`` and the graph rewrite that uses it, on CPU under Triton's interpreter
(skipped where triton is not installed; the GPU tests run the compiled kernel)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

CHECK = """
import torch
import gated_down
from generate import prefill
from test_llm_pipeline import PROMPT, build, tiny_pair

# The interpreter can neither time autotuning candidates nor ask a GPU for its SM count.
partial_sums = gated_down.partial_sums
gated_down.partial_sums = lambda g, w, gelu, sms: partial_sums(g, w, gelu, sms, tile=(16, 128))
gated_down._num_sms = lambda index: 132

torch.manual_seed(0)
for rows, inner, batch, gelu in [(96, 400, 1, False), (64, 1024, 2, True), (40, 300, 1, False)]:
    gate_up, weight = torch.randn(batch, 2 * inner), torch.randn(rows, inner) / inner**0.5
    gate, up = gate_up[:, :inner], gate_up[:, inner:]
    act = torch.nn.functional.gelu(gate, approximate="tanh") if gelu else torch.nn.functional.silu(gate)
    got = torch.ops.tllm.gated_down(gate_up, weight, gelu).sum(0)
    torch.testing.assert_close(got, (act * up) @ weight.t())

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


def test_kernel_and_decode_rewrite_match_pytorch():
    """The kernel against PyTorch (SiLU and tanh-GELU, masked edges, several splits, batch 2);
    then a tiny Llama and Gemma 3 whose decode steps go through it give the unrewritten
    graph's logits, and GPT-2 (no gated MLP) and layers wider than MAX_ROWS are left alone."""
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, TRITON_INTERPRET="1",
               PYTHONPATH=os.pathsep.join([str(root), str(root / "tests"), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]
