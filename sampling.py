"""Sampling inside the graph: temperature, top-k and top-p per row, from a seed.

The pass replaces the graph's next token (the greedy argmax) with ``sample(...)``, which keeps
the greedy token where a row's temperature is 0. The noise is a hash of (seed, position, token
id), not a random generator's state, so a step is a pure function of its inputs: a replayed
CUDA graph needs no host work, every backend and a build loaded from the build cache give the
same tokens for a seed, and a row's tokens do not depend on the batch around it.

Gumbel-max: with G = -log(-log U), argmax(logits / T + G) is token i with probability
softmax(logits / T)_i, and over a kept subset, that subset's renormalised distribution. With
neither top-k nor top-p a row draws from the whole vocabulary (its noise and argmax spread over
128 slices); with them, from the ``CANDIDATES`` most likely tokens, found slice by slice
(``candidates``): a vocabulary-wide ``topk`` costs most of a small model's step.
"""

from dataclasses import dataclass

import torch

from export_llm import add_row_input, argmax_in_slices, finish

CANDIDATES = 1024
SLICES = 128  # (at most)
PER_SLICE = 32
# The most rows whose candidates come from top_candidates' kernels. Their work grows with the rows
# (one row 16 us on an H200, 8 rows 66 us: the rank kernel compares all 4032 keys of a row pairwise),
# where torch.sort's batched sorts take 52 us for one row and grow little; beyond 8 rows the sorts
# are expected to win (not yet timed: benchmarks/sampler_bench.py --rows).
KERNEL_ROWS = 8
ROW_INPUTS = (("temperature", torch.float32), ("top_k", torch.int64), ("top_p", torch.float32), ("seed", torch.int64))
_LOW32 = 0xFFFFFFFF


@dataclass(frozen=True)
class Sampling:
    """One row's sampling settings; temperature 0 is greedy."""

    temperature: float = 0.0
    top_k: int = 0  # 0: no limit
    top_p: float = 1.0
    seed: int = 0

    def check(self):
        """None, or what is wrong (one line)."""
        if not self.temperature >= 0:
            return f"temperature must be >= 0, got {self.temperature}"
        if not 0 <= self.top_k < 1 << 31:
            return f"top_k must be in [0, 2^31), got {self.top_k}"
        if not 0 <= self.seed < 1 << 63:  # (an int64 input of the graph)
            return f"seed must be in [0, 2^63), got {self.seed}"
        if not 0 < self.top_p <= 1:
            return f"top_p must be in (0, 1], got {self.top_p}"
        return None


def _mix(h):
    """MurmurHash3's 32-bit finaliser, on int64 tensors holding 32-bit values (a product can
    pass 2^63 and wrap; its low 32 bits stay right)."""
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & _LOW32
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & _LOW32
    return h ^ (h >> 16)


def uniform(seed, position, token):
    """float32 U(0, 1), never 0 or 1, per (row's seed ``[B]``, row's position ``[B]``, token id
    ``[B, N]``). The token id is added, not multiplied: Inductor indexes a vocabulary-wide
    ``arange`` in int32, where a product would wrap (eager's int64 would not)."""
    row = _mix(((seed ^ (seed >> 32)) & _LOW32) ^ _mix(position & _LOW32))
    h = _mix(_mix((row[:, None] + token) & _LOW32) ^ row[:, None])
    return ((h >> 8).to(torch.float32) + 0.5) * 2.0**-24


def gumbel(seed, position, token):
    return -torch.log(-torch.log(uniform(seed, position, token)))


def plan(vocab, per_slice=None, count=None):
    """How ``candidates`` divides a vocabulary: (slice width, a power of two so that at most
    ``SLICES`` slices cover it; the largest kept per slice, ``PER_SLICE``; slices; candidates, a power
    of two, at most ``CANDIDATES``)."""
    per_slice, count = per_slice or PER_SLICE, count or CANDIDATES
    width = 1 << (-(-vocab // SLICES) - 1).bit_length()
    per_slice = min(per_slice, width)
    slices = -(-vocab // width)
    return width, per_slice, slices, min(count, 1 << (slices * per_slice - 1).bit_length())


def candidates(x):
    """The ``plan(...)[3]`` largest of ``x [B, V]``, sorted, found as the ``per_slice`` largest
    of each slice: two sorts of short rows, where ``topk`` over a whole vocabulary took 60-70 us
    on an H200 (benchmarks/sampler_bench.py); ``top_candidates.py`` does the same in two Triton
    kernels. Exact for every token among the ``per_slice`` largest of its slice, so for any
    top-k up to 32; a later candidate can be missed only where more than 32 of the 1024 share
    one slice. Where there are fewer values than candidates, -inf fills the rest."""
    rows, vocab = x.shape
    width, per_slice, slices, count = plan(vocab)
    x = torch.nn.functional.pad(x, (0, slices * width - vocab), value=float("-inf"))
    values, ids = x.view(rows, slices, width).sort(dim=-1, descending=True, stable=True)  # (ties: lower index first)
    ids = ids[..., :per_slice] + torch.arange(slices, device=x.device)[:, None] * width
    values, ids = values[..., :per_slice].reshape(rows, -1), ids.reshape(rows, -1)
    missing = count - values.shape[-1]
    if missing > 0:
        values = torch.nn.functional.pad(values, (0, missing), value=float("-inf"))
        ids = torch.cat([ids, slices * width + torch.arange(missing, device=x.device).expand(rows, -1)], -1)
    values, order = values.sort(dim=-1, descending=True, stable=True)
    return values[:, :count], ids.gather(1, order[:, :count])


def sample(logits, greedy, position_ids, temperature, top_k, top_p, seed, find_candidates=candidates):
    """The next token ``[B]`` of float32 ``logits [B, V]``: ``greedy`` where temperature is 0,
    else drawn at the row's last position. ``find_candidates``: ``candidates`` or its kernels'
    twin (``top_candidates.sample``)."""
    position = position_ids[..., -1] if position_ids.dim() == 2 else position_ids[0, :, -1]  # (M-RoPE: text axis)
    scaled = logits / temperature.clamp_min(1e-6)[:, None]
    vocab = torch.arange(logits.shape[-1], device=logits.device)
    anywhere = argmax_in_slices(scaled + gumbel(seed, position, vocab[None]))  # (the noise hashed in parallel)
    values, ids = find_candidates(scaled)
    rank = torch.arange(values.shape[-1], device=logits.device)
    kept = rank[None] < torch.where(top_k > 0, top_k, values.shape[-1])[:, None]
    probs = torch.softmax(torch.where(kept, values, float("-inf")), -1)
    kept = kept & (probs.cumsum(-1) - probs < top_p[:, None])  # the most likely token always stays
    pick = torch.argmax(torch.where(kept, values + gumbel(seed, position, ids), float("-inf")), -1)
    filtered = torch.gather(ids, 1, pick[:, None])[:, 0]
    drawn = torch.where((top_k > 0) | (top_p < 1), filtered, anywhere)
    return torch.where(temperature > 0, drawn, greedy)


def apply(gm, batch_size, kernels=False):
    """Add the row inputs of ``ROW_INPUTS`` and make the graph's next token ``sample(...)``;
    ``kernels``: its candidates from ``top_candidates.py`` (CUDA + triton)."""
    out = next(n for n in gm.graph.nodes if n.op == "output")
    logits, greedy, *rest = out.args[0]
    position_ids = [n for n in gm.graph.nodes if n.op == "placeholder"][1]
    rows = [add_row_input(gm, name, torch.empty((batch_size,), dtype=dtype, device="meta"))
            for name, dtype in ROW_INPUTS]
    if kernels:
        import top_candidates  # needs triton

        target = top_candidates.sample
    else:
        target = sample
    with gm.graph.inserting_before(out):
        token = gm.graph.call_function(target, (logits, greedy, position_ids, *rows))
    out.args = ((logits, token, *rest),)
    return finish(gm)


def row_values(settings):
    """The row inputs' values for a list of per-row Sampling settings, by input name."""
    return {name: [getattr(s, name) for s in settings] for name, _ in ROW_INPUTS}
