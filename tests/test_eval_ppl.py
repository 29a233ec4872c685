"""eval_ppl.py: the bundled text, perplexity() against cross-entropy computed directly (whole
sequence and strided by hand), the bundled SmolLM2's perplexity through the CLI, and one line
for bad flags."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

import eval_ppl
from tiny import tiny_pair


def test_text_is_hamlet_in_plain_english():
    text = eval_ppl.load_text()
    assert text.startswith("Hamlet\n\nACT I\n") and 170_000 < len(text) < 180_000
    assert "To be, or not to be: that is the question" in text
    assert text.isascii() and not any(mark in text for mark in ("**", "#", "\\", "_"))
    words = text.lower().split()
    assert len(words) > 25_000 and words.count("the") > 800 and words.count("and") > 600


def nll_sum(model, ids, begin, first, end):
    """Summed cross-entropy of tokens [first, end) from a full forward pass over [begin, end)."""
    logp = model(ids[None, begin:end]).logits[0].float().log_softmax(-1)
    return -sum(logp[t - 1 - begin, ids[t]].item() for t in range(first, end))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_whole_window_is_the_plain_cross_entropy(family):
    ours, ref = tiny_pair(family)
    ids = torch.randint(0, ours.config.vocab_size, (37,), generator=torch.Generator().manual_seed(1))
    result = eval_ppl.perplexity(ours, ids, window=64, stride=8, progress=False)
    with torch.no_grad():
        want = F.cross_entropy(ref(ids[None]).logits[0, :-1], ids[1:]).item()
    assert result["tokens"] == 36 and result["windows"] == 1
    assert result["perplexity"] == pytest.approx(math.exp(want), rel=1e-5)
    assert result["bits_per_token"] == pytest.approx(want / math.log(2), rel=1e-5)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_strided_windows_match_a_hand_computed_reference(family):
    ours, ref = tiny_pair(family)
    ids = torch.randint(0, ours.config.vocab_size, (37,), generator=torch.Generator().manual_seed(2))
    # window 16, stride 6: the first pass scores 1..15; each later one ends 6 further on and reads
    # the 16 tokens before its end; the last ends at 37, 3 further on.
    spans = [(0, 1, 16), (6, 16, 22), (12, 22, 28), (18, 28, 34), (21, 34, 37)]
    assert eval_ppl.windows(37, 16, 6) == spans
    with torch.no_grad():
        want = sum(nll_sum(ref, ids, *span) for span in spans) / 36
        whole = F.cross_entropy(ref(ids[None]).logits[0, :-1], ids[1:]).item()
    result = eval_ppl.perplexity(ours, ids, window=16, stride=6, progress=False)
    assert result["tokens"] == 36 and result["windows"] == 5
    assert result["nll"] == pytest.approx(want, rel=1e-5)
    assert result["nll"] != pytest.approx(whole, rel=1e-5)  # the shorter context is what was measured


def test_weights_changed_in_place_are_measured():
    model, _ = tiny_pair("llama")
    ids = torch.randint(0, model.config.vocab_size, (40,), generator=torch.Generator().manual_seed(3))
    before = eval_ppl.perplexity(model, ids, 16, 8, progress=False)["perplexity"]
    with torch.no_grad():  # a crude stand-in for quantized weights: FP32 rounded to BF16
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16))
    after = eval_ppl.perplexity(model, ids, 16, 8, progress=False)["perplexity"]
    assert after != before and after == pytest.approx(before, rel=1e-2)


def test_bundled_smollm2_perplexity_is_plausible(tmp_path, capsys):
    out = tmp_path / "ppl.json"
    eval_ppl.main(["--max_tokens", "256", "--window", "128", "--stride", "64", "--output_json", str(out)])
    line = capsys.readouterr().out.strip()
    record = json.loads(out.read_text())
    assert "perplexity" in line and "255 tokens of Hamlet" in line
    assert record["tokens"] == 255 and record["windows"] == 3 and record["precision"] == "FP32"
    # Measured 19.9 (torch 2.13, CPU); a random guess over 49152 tokens would be 49152.
    assert 12 < record["perplexity"] < 30
    assert record["bits_per_token"] == pytest.approx(math.log2(record["perplexity"]))


@pytest.mark.parametrize("argv, message", [
    (["--window", "64", "--stride", "64"], "--stride 64 must be less than --window 64"),
    (["--window", "9000"], "--window 9000 is more than the model's 8192 positions"),
    (["--max_tokens", "1"], "--max_tokens must be >= 2"),
    (["--stride", "x"], "argument --stride: 'x' is not an integer"),
])
def test_bad_flags_end_in_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        eval_ppl.main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert exit_info.value.code == 2 and len(lines) == 1 and message in lines[0] and "Traceback" not in err, err
