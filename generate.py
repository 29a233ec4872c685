"""Greedy generation over a rewritten graph: owns the KV cache for each cache mode, runs prefill
(whole or in chunks) and decode steps, and optionally replays decode as a CUDA graph."""

import torch

CACHE_MODES = ("static_v2", "static_v1", "dynamic", "")


class Generator:
    """Runs ``graph(*model_inputs, *cache_inputs)`` one step at a time.

    ``step(x, position_ids)`` feeds the next S positions (``x`` is token ids ``[B, S]`` or
    embeddings ``[B, S, H]``; positions ``[B, S]`` or ``[3, B, S]``, defaulting to the next
    text positions) and returns float32 logits of the last position, ``[B, V]``.
    """

    def __init__(self, graph, cache_shapes, cache, batch_size, max_len, dtype, device, inplace=True, cudagraph=False):
        if cudagraph and (cache != "static_v2" or not inplace or device.type != "cuda"):
            raise ValueError("CUDA-graph decode needs --cache static_v2 on a CUDA device with an in-place backend")
        self.graph, self.cache, self.inplace = graph, cache, inplace
        self.batch_size, self.max_len, self.dtype, self.device = batch_size, max_len, dtype, device
        self.cache_shapes = cache_shapes
        self.cudagraph = cudagraph
        self.decode_graph = None
        self.caches = []
        if cache in ("static_v1", "static_v2"):
            self.caches = [
                torch.zeros((batch_size, heads, max_len, dim), dtype=dtype, device=device)
                for heads, dim in cache_shapes
            ]
        self.reset()

    def reset(self):
        """Forget the sequence. Static buffers are kept: rows past the length are never read."""
        self.length = 0
        self.seen_inputs, self.seen_positions = None, None
        if self.cache == "dynamic":
            self.caches = [
                torch.zeros((self.batch_size, heads, 0, dim), dtype=self.dtype, device=self.device)
                for heads, dim in self.cache_shapes
            ]

    def text_positions(self, length):
        pos = torch.arange(self.length, self.length + length, device=self.device)
        return pos[None, :].expand(self.batch_size, length)

    def step(self, x, position_ids=None):
        s = x.shape[1]
        if self.length + s > self.max_len:
            raise ValueError(f"{self.length + s} positions exceed the cache length {self.max_len}")
        if position_ids is None:
            position_ids = self.text_positions(s)
        if self.decode_graph is not None and s == 1:
            logits = self._replay(x, position_ids)
        elif self.cudagraph and s == 1 and self.length > 0:
            logits = self._capture(x, position_ids)
        else:
            logits = self._run(x, position_ids)
        self.length += s
        return logits

    def _run(self, x, position_ids):
        cache_position = torch.arange(self.length, self.length + x.shape[1], device=self.device)
        if self.cache == "":
            # No cache: recompute the whole sequence each step.
            self.seen_inputs = x if self.seen_inputs is None else torch.cat([self.seen_inputs, x], 1)
            self.seen_positions = (
                position_ids if self.seen_positions is None else torch.cat([self.seen_positions, position_ids], -1)
            )
            return self.graph(self.seen_inputs, self.seen_positions)[0][:, -1].float()
        if self.cache == "static_v2":
            out = self.graph(x, position_ids, cache_position, *self.caches)
        elif self.cache == "static_v1":
            out = self.graph(x, position_ids, *self.caches, self.length)
        else:
            out = self.graph(x, position_ids, *self.caches)
        if len(out) > 1:
            self.caches = list(out[1:])
        return out[0][:, -1].float()

    def _capture(self, x, position_ids):
        """Capture one decode step (shapes fixed at one token) and replay it from now on."""
        self.static_x, self.static_pos = x.clone(), position_ids.clone()
        self.static_cache_position = torch.tensor([self.length], device=self.device)
        args = (self.static_x, self.static_pos, self.static_cache_position, *self.caches)
        # Warm up on a side stream (compilers allocate and autotune here), rewriting the same
        # rows each time: the step is idempotent, so the cache stays correct.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self.graph(*args)
        torch.cuda.current_stream().wait_stream(side)
        self.decode_graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.decode_graph):
            self.static_logits = self.graph(*args)[0][:, -1].float()
        return self._replay(x, position_ids)

    def _replay(self, x, position_ids):
        self.static_x.copy_(x)
        self.static_pos.copy_(position_ids)
        self.static_cache_position.fill_(self.length)
        self.decode_graph.replay()
        return self.static_logits


def prefill(gen, x, position_ids=None, chunk=0):
    """Feed a prompt, in chunks of ``chunk`` positions if asked; returns the last logits."""
    s = x.shape[1]
    if position_ids is None:
        position_ids = gen.text_positions(s)
    step = chunk if chunk and chunk < s else s
    for start in range(0, s, step):
        logits = gen.step(x[:, start : start + step], position_ids[..., start : start + step])
    return logits


def greedy(gen, first_logits, num_tokens, eos_ids=(), embed=None, decode_positions=None, on_step=None):
    """Greedy decoding from the prefill's logits: up to ``num_tokens`` new tokens per row.

    Stops early when every row has produced an EOS id (pass no ids for a fixed length; then
    no step waits on the host). Rows that finished keep emitting EOS. ``embed`` maps tokens
    to the graph's input (identity for token-id graphs); ``decode_positions(length)`` gives
    positions for models whose positions are not the text positions (M-RoPE).
    """
    eos = torch.tensor(sorted(eos_ids), device=first_logits.device, dtype=torch.long)
    token = first_logits.argmax(-1)
    done = torch.zeros_like(token, dtype=torch.bool)
    tokens = []
    for i in range(num_tokens):
        if len(eos):
            token = torch.where(done, eos[0], token)
            done |= torch.isin(token, eos)
        tokens.append(token)
        if on_step:
            on_step(i)
        if i == num_tokens - 1 or (len(eos) and bool(done.all())):
            break
        x = token[:, None] if embed is None else embed(token[:, None])
        positions = decode_positions(gen.length) if decode_positions else None
        token = gen.step(x, positions).argmax(-1)
    return torch.stack(tokens, 1)
