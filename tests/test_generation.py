"""Generation as users call it: batches of different prompts (left-padded) against each prompt
alone and against Hugging Face ``generate`` with left padding (every family; every cache mode
on three of them), per-row EOS and limits, and
sampling in the graph (top-k 1 is greedy, draws follow Hugging Face's filtered distribution,
a seed repeats); then the CLI's prompt files, sampling flags and streaming."""

import json

import pytest
import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

import run_llm
import sampling
from generate import generate
from sampling import Sampling
from tiny import CACHE_MODES, FAMILIES, TOL, build, tiny_pair

LENGTHS = (5, 24, 13)  # the longest crosses Gemma's window of 16; the others are padded by 19 and 11
NEW = 30
MAX_LEN = 64


def random_prompts(vocab, lengths=LENGTHS, seed=1):
    torch.manual_seed(seed)
    return [torch.randint(0, vocab, (n,)).tolist() for n in lengths]


def hf_left_padded(ref, prompts, new_tokens):
    """Hugging Face generate on the prompts left-padded into one batch, with its attention mask."""
    longest = max(map(len, prompts))
    ids = torch.tensor([[0] * (longest - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        out = ref.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    return out[:, longest:].tolist()


def assert_same_or_tied(ref, prompt, ours, expected):
    """Token lists equal, or first differing where the reference itself is at a near-tie."""
    if ours == expected:
        return
    i = next(j for j, (a, b) in enumerate(zip(ours, expected)) if a != b)
    with torch.no_grad():
        top2 = ref(torch.tensor([prompt + expected[:i]])).logits[0, -1].topk(2).values
    assert (top2[0] - top2[1]).item() < 10 * TOL, f"tokens diverge at step {i} without a near-tie"


def build_for(model, batch, cache="static_v2", **fields):
    return build(model, torch.zeros((batch, 8), dtype=torch.long), cache, max_len=MAX_LEN, **fields)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_padded_batch_equals_alone_and_transformers(family):
    ours, ref = tiny_pair(family)
    prompts = random_prompts(ours.config.vocab_size)
    batch = generate(build_for(ours, 3), prompts, NEW)
    one = build_for(ours, 1)
    assert batch == [generate(one, [p], NEW)[0] for p in prompts]
    for prompt, row, expected in zip(prompts, batch, hf_left_padded(ref, prompts, NEW)):
        assert_same_or_tied(ref, prompt, row, expected)


@pytest.mark.parametrize("cache", CACHE_MODES[1:])
@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2"])
def test_padded_batch_equals_alone_in_every_cache_mode(family, cache):
    ours, ref = tiny_pair(family)
    prompts = random_prompts(ours.config.vocab_size)
    batch = generate(build_for(ours, 3, cache), prompts, NEW)
    one = build_for(ours, 1, cache)
    assert batch == [generate(one, [p], NEW)[0] for p in prompts]
    for prompt, row, expected in zip(prompts, batch, hf_left_padded(ref, prompts, NEW)):
        assert_same_or_tied(ref, prompt, row, expected)


def test_chunked_prefill_of_a_padded_batch():
    ours, _ = tiny_pair("gemma3")
    prompts = random_prompts(ours.config.vocab_size)
    gen = build_for(ours, 3, chunk=7)
    assert generate(gen, prompts, NEW, chunk=7) == generate(build_for(ours, 3), prompts, NEW)


def test_each_row_stops_at_its_own_eos_and_limit():
    ours, _ = tiny_pair("qwen2")
    prompts = random_prompts(ours.config.vocab_size)
    gen = build_for(ours, 3)
    free = generate(gen, prompts, NEW)
    eos = free[1][6]  # row 1 ends at its 7th token (unless that id came earlier)
    rows = generate(gen, prompts, NEW, eos_ids=[eos])
    for row, alone in zip(rows, free):
        end = alone.index(eos) + 1 if eos in alone else NEW
        assert row == alone[:end]
    assert len(rows[1]) <= 7
    assert [len(r) for r in generate(gen, prompts, [3, 9, 1])] == [3, 9, 1]
    two = generate(gen, prompts[:2], NEW)  # a batch not full: the spare row takes nothing
    assert two == free[:2]


def test_a_prompt_that_does_not_fit_is_refused():
    ours, _ = tiny_pair("llama")
    gen = build_for(ours, 1)
    with pytest.raises(ValueError, match="exceed the cache length"):
        generate(gen, [[1] * 40], MAX_LEN - 38)
    with pytest.raises(ValueError, match="without sampling"):
        generate(gen, [[1, 2]], 2, sampling=Sampling(temperature=1.0))


def test_top_k_1_is_greedy_and_a_seed_repeats():
    ours, _ = tiny_pair("llama")
    prompts = random_prompts(ours.config.vocab_size)
    greedy = generate(build_for(ours, 3), prompts, NEW)
    gen = build_for(ours, 3, temperature=1.0, seed=0)
    assert generate(gen, prompts, NEW, sampling=Sampling(1.0, top_k=1, seed=3)) == greedy
    assert generate(gen, prompts, NEW, sampling=Sampling(0.0)) == greedy  # temperature 0: greedy rows
    settings = [Sampling(1.0, seed=s) for s in (7, 8, 9)]
    drawn = generate(gen, prompts, NEW, sampling=settings)
    assert drawn == generate(gen, prompts, NEW, sampling=settings)
    assert drawn != greedy and len({tuple(r) for r in drawn}) == 3
    # A row's draws depend on its prompt and seed, not on the batch around it.
    one = build_for(ours, 1, temperature=1.0, seed=0)
    assert [generate(one, [p], NEW, sampling=s)[0] for p, s in zip(prompts, settings)] == drawn
    assert generate(gen, prompts, NEW, sampling=[Sampling(1.0, seed=s) for s in (17, 8, 9)])[0] != drawn[0]


# The chi-square distribution's 0.999 quantile by degrees of freedom.
CHI2_999 = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 5: 20.52, 6: 22.46, 7: 24.32, 8: 26.12, 9: 27.88, 10: 29.59,
            11: 31.26}


def expected_distribution(logits, setting):
    """Hugging Face's own warpers (temperature, then top-k, then top-p), as ``generate`` applies them."""
    scores = logits[None].clone()
    scores = TemperatureLogitsWarper(setting.temperature)(None, scores)
    if setting.top_k:
        scores = TopKLogitsWarper(setting.top_k)(None, scores)
    if setting.top_p < 1:
        scores = TopPLogitsWarper(setting.top_p)(None, scores)
    return torch.softmax(scores, -1)[0]


@pytest.mark.parametrize("setting", [Sampling(1.0), Sampling(0.7, top_k=5), Sampling(1.3, top_p=0.8),
                                     Sampling(1.0, top_k=6, top_p=0.9)], ids=str)
def test_draws_follow_the_filtered_distribution(setting):
    """40000 draws (a seed each) against Hugging Face's filtered distribution: a chi-square
    test at the 0.1% level, and no draw outside the kept tokens."""
    torch.manual_seed(0)
    logits = torch.randn(12) * 1.5
    rows = 40000
    rep = lambda value, dtype: torch.full((rows,), value, dtype=dtype)  # noqa: E731
    tokens = sampling.sample(logits.expand(rows, -1), torch.zeros(rows, dtype=torch.long),
                             torch.full((rows, 1), 17), rep(setting.temperature, torch.float32),
                             rep(setting.top_k, torch.long), rep(setting.top_p, torch.float32), torch.arange(rows))
    counts = torch.bincount(tokens, minlength=12).double()
    expected = expected_distribution(logits, setting).double() * rows
    kept = expected > 0
    assert counts[~kept].sum() == 0
    chi2 = ((counts[kept] - expected[kept]) ** 2 / expected[kept]).sum().item()
    assert chi2 < CHI2_999[int(kept.sum()) - 1], chi2


def test_uniform_noise_is_uniform_over_positions_and_tokens():
    u = sampling.uniform(torch.tensor([5]), torch.tensor([3]), torch.arange(100000)[None])[0]
    assert 0 < u.min() and u.max() < 1
    counts = torch.histc(u, bins=20, min=0, max=1)
    assert ((counts - 5000).abs() < 5000 * 0.05).all(), counts
    by_position = sampling.uniform(torch.tensor([5] * 1000), torch.arange(1000), torch.zeros(1000, 1, dtype=torch.long))
    assert abs(by_position.mean().item() - 0.5) < 0.03


# The CLI, on a tiny random Llama with the SmolLM2 tokenizer (tests/conftest.py).


def run_main(capsys, *args):
    run_llm.main([*map(str, args)])
    return capsys.readouterr()


def test_prompts_file_gives_one_entry_per_prompt(tiny_chat_dir, tmp_path, capsys):
    texts = ["What is 2+2?", "Name three colours of the rainbow, please.", "Hi"]
    lines = tmp_path / "prompts.jsonl"
    lines.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
    out = tmp_path / "run.json"
    stdout = run_main(capsys, "--model", tiny_chat_dir, "--prompts_file", lines, "--batch_size", 2,
                      "--num_tokens", 12, "--output_json", out).out
    record = json.loads(out.read_text())
    assert record["prompts"] == texts and record["batch_size"] == 2
    assert len(record["generated_token_ids"]) == len(record["finish_reasons"]) == 3
    assert all(f"[{i}]" in stdout for i in range(3))
    plain = tmp_path / "prompts.txt"
    plain.write_text(texts[1] + "\n")
    alone = tmp_path / "alone.json"
    run_main(capsys, "--model", tiny_chat_dir, "--prompts_file", plain, "--num_tokens", 12, "--output_json", alone)
    assert json.loads(alone.read_text())["generated_token_ids"][0] == record["generated_token_ids"][1]


def test_streamed_text_equals_the_whole_text(tiny_chat_dir, tmp_path, capsys):
    out = tmp_path / "run.json"
    args = ["--model", tiny_chat_dir, "--num_tokens", 24, "--temperature", 0.8, "--seed", 4, "--output_json", out]
    whole = run_main(capsys, *args).out
    first = json.loads(out.read_text())
    streamed = run_main(capsys, *args, "--stream").out
    assert streamed == whole and first["generated_text"][0] + "\n" == whole
    assert first["sampling"] == {"temperature": 0.8, "top_k": 0, "top_p": 1.0, "seed": 4}
    assert json.loads(out.read_text())["generated_token_ids"] == first["generated_token_ids"]


@pytest.mark.parametrize("args, message", [
    (["--top_k", "5"], "needs --temperature > 0"),
    (["--temperature", "-1"], "--temperature: must be >= 0"),
    (["--temperature", "1", "--top_p", "0"], "--top_p: must be in (0, 1]"),
    (["--prompt", "a", "--prompt", "b", "--stream"], "needs a batch of one prompt"),
    (["--prompts_file", "/nonexistent/prompts.txt"], "--prompts_file /nonexistent/prompts.txt"),
    (["--prompt", "a", "--prompts_file", "x"], "choose one"),
    (["--max_len", "8", "--num_tokens", "16"], "--max_len is 8"),
    (["--temperature", "1", "--seed", str(1 << 63)], "--seed must be in [0, 2^63)"),
])
def test_bad_generation_flags_end_in_one_line(tiny_chat_dir, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        run_llm.main(["--model", str(tiny_chat_dir), *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert message in err, err


def test_a_bad_jsonl_line_is_named(tmp_path, capsys):
    lines = tmp_path / "p.jsonl"
    lines.write_text('{"prompt": "ok"}\n{"text": "no prompt field"}\n')
    with pytest.raises(SystemExit):
        run_llm.main(["--prompts_file", str(lines)])
    assert "line 2" in capsys.readouterr().err
