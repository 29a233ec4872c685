"""``tllm::decode_attention``, the split-K decode kernel, against masked SDPA in FP32: several
splits of several tiles and their merge, one split, grouped heads, a sliding window, the first
position, head dims of 64, 80 (padded), 128 and 256; its PDL twin's fake output (what Inductor
allocates for it) matches the real one. Without a GPU under Triton's interpreter (conftest.py),
with one compiled; skipped where triton is not installed."""

import pytest
import torch

import register_sdpa

pytest.importorskip("triton", reason="the kernel is written in Triton (comes with CUDA builds of torch)")
import decode_attention  # noqa: E402  (needs triton)

# batch, query heads, K/V heads, head dim, cache length, new token's position, window, keys per split
CASES = {
    "splits of four tiles each, grouped heads": (1, 4, 2, 64, 512, 400, 0, 256),
    "sliding window narrower than the visible keys": (2, 8, 2, 128, 192, 100, 64, 32),
    "a 256-wide head (Gemma 3), 3 heads per K/V head": (1, 3, 1, 256, 96, 95, 0, 32),
    "one split over five tiles, the last one partial; head dim 80": (1, 2, 2, 80, 300, 299, 0, 1024),
    "the first position: one visible key": (1, 2, 2, 64, 64, 0, 0, 32),
}


@pytest.fixture
def device(triton_device, monkeypatch):
    # The split plans above are for an H100's 132 SMs (the interpreter has no GPU to ask).
    monkeypatch.setattr(decode_attention, "num_sms", lambda index: 132)
    # On a GPU, FP32 products in tl.dot default to TF32; the reference is exact FP32.
    monkeypatch.setenv("TRITON_F32_DEFAULT", "ieee")
    return triton_device


@pytest.mark.parametrize("case", list(CASES))
def test_decode_attention_matches_masked_sdpa(case, device):
    b, hq, hkv, d, keys, position, window, per_split = CASES[case]
    torch.manual_seed(0)
    q = torch.randn(b, hq, 1, d, device=device)
    k, v = (torch.randn(b, hkv, keys, d, device=device) for _ in range(2))
    position = torch.tensor([position], device=device)
    got = decode_attention.attend(q, k, v, position, d**-0.5, window, min_keys_per_split=per_split)
    mask = register_sdpa.visible_keys(position, keys, window)
    want = register_sdpa._masked_gqa_sdpa(q, k, v, mask, d**-0.5).transpose(1, 2)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    fake = decode_attention._decode_attention_pdl_fake(q, k, v, position, d**-0.5, window)
    assert (fake.shape, fake.stride(), fake.dtype) == (got.shape, got.stride(), got.dtype)


@pytest.mark.parametrize("window", [0, 48])
def test_left_padded_rows_skip_their_padding(device, window):
    """Each row's keys start at its own ``key_start`` (a left-padded batch): the kernel equals
    masked SDPA with that row's padding hidden, across split boundaries (rows padded by 0, 37,
    130 and 199 of 200 keys, splits of 64)."""
    torch.manual_seed(0)
    b, hq, hkv, d, keys, position = 4, 4, 2, 64, 256, 199
    q = torch.randn(b, hq, 1, d, device=device)
    k, v = (torch.randn(b, hkv, keys, d, device=device) for _ in range(2))
    position, key_start = torch.tensor([position], device=device), torch.tensor([0, 37, 130, 199], device=device)
    got = decode_attention.attend(q, k, v, position, d**-0.5, window, min_keys_per_split=64, key_start=key_start)
    mask = register_sdpa.visible_keys(position, keys, window)[None] & (torch.arange(keys, device=device)
                                                                       >= key_start[:, None])[:, None, :]
    want = register_sdpa._masked_gqa_sdpa(q, k, v, mask, d**-0.5).transpose(1, 2)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_a_pad_position_sees_only_itself(device):
    """A one-token step at a pad position (a padded batch fed in one-token chunks) attends to
    its own key alone, as the masked op does, rather than to nothing (0/0, NaN in its K/V)."""
    torch.manual_seed(0)
    b, hq, hkv, d, keys, position = 2, 4, 2, 64, 256, 150
    q = torch.randn(b, hq, 1, d, device=device)
    k, v = (torch.randn(b, hkv, keys, d, device=device) for _ in range(2))
    got = decode_attention.attend(q, k, v, torch.tensor([position], device=device), d**-0.5, 0,
                                  min_keys_per_split=64, key_start=torch.tensor([0, 200], device=device))
    own = v[1, :, position].repeat_interleave(hq // hkv, 0)  # each query head's K/V head
    torch.testing.assert_close(got[1, 0], own, atol=1e-5, rtol=1e-5)
