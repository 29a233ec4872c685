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


def candidates(x, slices=128, per_slice=32):
    """The ``CANDIDATES`` largest of ``x [B, V]`` found as the ``per_slice`` largest of each of
    ``slices`` slices, sorted: two sorts of short rows, one thread block each, where ``topk``
    over a whole vocabulary took 60-70 us on an H200 (benchmarks/sampler_bench.py). Exact for
    every token among the ``per_slice`` largest of its slice, so for any top-k up to 32; a
    later candidate can be missed only where more than 32 of the 1024 share one slice."""
    x = torch.nn.functional.pad(x, (0, -x.shape[-1] % slices), value=float("-inf"))
    width = x.shape[-1] // slices
    values, ids = x.view(x.shape[0], slices, width).sort(-1, descending=True)
    keep = min(per_slice, width)
    ids = ids[..., :keep] + torch.arange(slices, device=x.device)[:, None] * width
    values, order = values[..., :keep].reshape(x.shape[0], -1).sort(-1, descending=True)
    count = min(CANDIDATES, order.shape[-1])
    return values[:, :count], ids.reshape(x.shape[0], -1).gather(1, order[:, :count])


def sample(logits, greedy, position_ids, temperature, top_k, top_p, seed):
    """The next token ``[B]`` of float32 ``logits [B, V]``: ``greedy`` where temperature is 0,
    else drawn at the row's last position."""
    position = position_ids[..., -1] if position_ids.dim() == 2 else position_ids[0, :, -1]  # (M-RoPE: text axis)
    scaled = logits / temperature.clamp_min(1e-6)[:, None]
    vocab = torch.arange(logits.shape[-1], device=logits.device)
    anywhere = argmax_in_slices(scaled + gumbel(seed, position, vocab[None]))  # (the noise hashed in parallel)
    values, ids = candidates(scaled)
    rank = torch.arange(values.shape[-1], device=logits.device)
    kept = rank[None] < torch.where(top_k > 0, top_k, values.shape[-1])[:, None]
    probs = torch.softmax(torch.where(kept, values, float("-inf")), -1)
    kept = kept & (probs.cumsum(-1) - probs < top_p[:, None])  # the most likely token always stays
    pick = torch.argmax(torch.where(kept, values + gumbel(seed, position, ids), float("-inf")), -1)
    filtered = torch.gather(ids, 1, pick[:, None])[:, 0]
    drawn = torch.where((top_k > 0) | (top_p < 1), filtered, anywhere)
    return torch.where(temperature > 0, drawn, greedy)


def apply(gm, batch_size):
    """Add the row inputs of ``ROW_INPUTS`` and make the graph's next token ``sample(...)``."""
    out = next(n for n in gm.graph.nodes if n.op == "output")
    logits, greedy, *rest = out.args[0]
    position_ids = [n for n in gm.graph.nodes if n.op == "placeholder"][1]
    rows = [add_row_input(gm, name, torch.empty((batch_size,), dtype=dtype, device="meta"))
            for name, dtype in ROW_INPUTS]
    with gm.graph.inserting_before(out):
        token = gm.graph.call_function(sample, (logits, greedy, position_ids, *rows))
    out.args = ((logits, token, *rest),)
    return finish(gm)


def row_values(settings):
    """The row inputs' values for a list of per-row Sampling settings, by input name."""
    return {name: [getattr(s, name) for s in settings] for name, _ in ROW_INPUTS}
