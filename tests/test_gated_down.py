"""``tllm::gated_down``, the down projection of a gated MLP for one-token steps, against
PyTorch (SiLU and tanh-GELU, masked edges, several splits, batch 2), with its PDL twin's fake
output (what Inductor allocates for it) matching the real one; then its graph rewrite: a tiny
Llama and Gemma 3 whose decode steps go through it give the unrewritten graph's logits, and
GPT-2 (no gated MLP) and layers wider than MAX_ROWS are left alone. Without a GPU under Triton's
interpreter (conftest.py), with one compiled; skipped where triton is not installed."""

import pytest
import torch

from generate import prefill
from tiny import PROMPT, build, tiny_pair

pytest.importorskip("triton", reason="the kernel is written in Triton (comes with CUDA builds of torch)")
import gated_down  # noqa: E402  (needs triton)


@pytest.fixture
def device(triton_device, monkeypatch):
    # The split plans are for an H100's 132 SMs (the interpreter has no GPU to ask).
    monkeypatch.setattr(gated_down, "num_sms", lambda index: 132)
    if triton_device.type == "cpu":  # the interpreter cannot time autotuning's candidates: one fixed tile
        partial_sums = gated_down.partial_sums
        monkeypatch.setattr(gated_down, "partial_sums", lambda gate_up, weight, gelu, sms, pdl=False: partial_sums(
            gate_up, weight, gelu, sms, tile=(16, 128), pdl=pdl))
    return triton_device


@pytest.mark.parametrize("rows,inner,batch,gelu", [(96, 400, 1, False), (64, 1024, 2, True), (40, 300, 1, False)])
def test_gated_down_matches_pytorch(rows, inner, batch, gelu, device):
    torch.manual_seed(0)
    gate_up, weight = torch.randn(batch, 2 * inner, device=device), torch.randn(rows, inner, device=device) / inner**0.5
    gate, up = gate_up[:, :inner], gate_up[:, inner:]
    act = torch.nn.functional.gelu(gate, approximate="tanh") if gelu else torch.nn.functional.silu(gate)
    partial = torch.ops.tllm.gated_down(gate_up, weight, gelu)
    torch.testing.assert_close(partial.sum(0), (act * up) @ weight.t())
    fake = gated_down._gated_down_pdl_fake(gate_up, weight, gelu)
    assert (fake.shape, fake.stride(), fake.dtype) == (partial.shape, partial.stride(), partial.dtype)


def teacher_forced_logits(gen, sequence):
    gen.reset()
    with torch.no_grad():
        steps = [prefill(gen, sequence[:, :PROMPT])[0]]
        steps += [gen.step(sequence[:, j : j + 1])[0] for j in range(PROMPT, sequence.shape[1])]
    return steps


@pytest.mark.parametrize("family,layers", [("llama", 2), ("gemma3", 6), ("gpt2", 0)])
def test_rewrite_gives_the_unrewritten_logits(family, layers, device, monkeypatch):
    model, _ = tiny_pair(family, device=device)
    sequence = torch.randint(0, 512, (1, PROMPT + 6), device=device)
    # the static_v2 step graph as run_llm.py builds it, without this rewrite (nor the decode attention kernel's)
    gen = build(model, sequence[:, :PROMPT], "static_v2", decode_attention="sdpa", gated_down=False)
    want = teacher_forced_logits(gen, sequence)
    with monkeypatch.context() as narrow:
        narrow.setattr(gated_down, "MAX_ROWS", 0)  # narrower than any layer: nothing to rewrite
        assert gated_down.use_gated_down(gen.graph) == 0
    assert gated_down.use_gated_down(gen.graph) == layers
    for got, expected in zip(teacher_forced_logits(gen, sequence), want, strict=True):
        torch.testing.assert_close(got, expected)
