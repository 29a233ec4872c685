"""The sampler's candidates: ``sampling.candidates`` against an exact ``topk`` (its first 32
exact, every value one of the row's), and ``tllm::top_candidates``, its Triton twin, against
it on vocabularies that fill their slices, leave a slice short, or hold fewer values than
candidates, with negative values, ties and -inf; then ``top_candidates.sample`` draws the
tokens ``sampling.sample`` draws. Without a GPU under Triton's interpreter (conftest.py), with
one compiled; skipped where triton is not installed."""

import pytest
import torch

import sampling

VOCABS = [128 * 40, 128 * 24 + 7, 300]


def logits(rows, vocab, device="cpu"):
    torch.manual_seed(vocab)
    x = torch.randn(rows, vocab) * 3
    x[0, 5] = x[0, 9] = x[0].max() + 1  # a tie for the largest: the lower index first
    x[1, :50] = float("-inf")
    return x.to(device)


@pytest.mark.parametrize("vocab", VOCABS)
def test_candidates_hold_the_largest_values(vocab):
    x = logits(3, vocab)
    values, ids = sampling.candidates(x)
    count = sampling.plan(vocab)[3]
    assert values.shape == ids.shape == (3, count)
    exact = x.topk(min(32, vocab), -1).values
    torch.testing.assert_close(values[:, :32], exact[:, :32])
    real = ids < vocab
    assert (values[~real] == float("-inf")).all()
    assert torch.equal(x.gather(1, ids.clamp_max(vocab - 1))[real], values[real])
    assert (values[:, :-1] >= values[:, 1:]).all()
    assert ids[0, :2].tolist() == [5, 9]


@pytest.fixture
def fewer(triton_device, monkeypatch):
    """Under the interpreter, fewer slices and candidates: it runs one program at a time, each
    sort step a numpy call."""
    if triton_device.type == "cpu":
        monkeypatch.setattr(sampling, "SLICES", 8)
        monkeypatch.setattr(sampling, "PER_SLICE", 8)
        monkeypatch.setattr(sampling, "CANDIDATES", 128)
    return triton_device


@pytest.mark.parametrize("vocab", [VOCABS[0], VOCABS[2]])
def test_the_kernels_find_what_torch_finds(vocab, fewer):
    import top_candidates  # needs triton

    x = logits(3, vocab, fewer)
    values, ids = top_candidates.candidates(x)
    want_values, want_ids = sampling.candidates(x)
    assert values.shape == ids.shape == want_values.shape
    assert torch.equal(values, want_values)
    finite = want_values > float("-inf")
    assert torch.equal(ids[finite], want_ids[finite])
    assert ids[0, :2].tolist() == [5, 9]


def test_the_kernels_sample_what_torch_samples(fewer):
    import top_candidates  # needs triton

    triton_device = fewer
    rows, vocab = 4, VOCABS[1]
    x = logits(rows, vocab, triton_device)
    full = lambda value, dtype: torch.full((rows,), value, dtype=dtype, device=triton_device)  # noqa: E731
    args = (x, x.argmax(-1), torch.full((rows, 1), 11, device=triton_device), full(0.9, torch.float32),
            torch.tensor([0, 5, 50, 1], device=triton_device), full(0.8, torch.float32),
            torch.arange(rows, device=triton_device))
    assert torch.equal(top_candidates.sample(*args), sampling.sample(*args))


@pytest.mark.parametrize("rows,kernels", [(1, True), (sampling.KERNEL_ROWS, True), (sampling.KERNEL_ROWS + 1, False)])
def test_the_sample_pass_takes_the_kernels_for_few_rows(rows, kernels, monkeypatch):
    import config
    import passes

    run = config.resolve("llama", device="cpu", temperature=1.0, batch_size=rows)
    monkeypatch.setattr(config, "triton_kernels_available", lambda device, backend: True)  # (as on CUDA)
    chosen = []
    monkeypatch.setattr(sampling, "apply", lambda gm, batch_size, kernels: chosen.append(kernels))
    sample = next(p for p in passes.PASSES if p.name == "sample")
    sample.run(None, passes.Graph(run, 64))
    assert chosen == [kernels]
