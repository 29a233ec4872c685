"""Greedy generation over a rewritten graph: owns the KV cache for each cache mode, runs prefill
(whole or in chunks) and decode steps, and optionally replays each step as a CUDA graph."""

import torch

import cache_modes


class Generator:
    """Runs ``graph(*model_inputs, *cache_inputs)`` one step at a time.

    ``step(x, position_ids)`` feeds the next S positions (``x`` is token ids ``[B, S]`` or
    embeddings ``[B, S, H]``; positions ``[B, S]`` or ``[3, B, S]``, defaulting to the next
    text positions) and returns float32 logits of the last position ``[B, V]`` and the greedy
    next token ``[B]`` (their argmax, computed in the graph). ``cache`` names the mode
    (``cache_modes.MODES``) that owns the cache's buffers and the graph's calling convention.
    """

    def __init__(self, graph, cache_shapes, cache, batch_size, max_len, dtype, device, cudagraph=False,
                 first_graph=None, fed_back=True):
        self.mode = cache_modes.MODES[cache]
        if cudagraph and (not self.mode.FIXED_SHAPES or device.type != "cuda"):
            raise ValueError("CUDA graphs need --cache static_v2 on a CUDA device")
        # A mode with FIRST_GRAPH can have a second graph for a prompt fed into an empty cache
        # (static_v2: causal flash attention over the new rows instead of a masked pass over the
        # whole buffer).
        self.graph, self.first_graph, self.cache = graph, first_graph, cache
        self.batch_size, self.max_len, self.dtype, self.device = batch_size, max_len, dtype, device
        self.cache_shapes = cache_shapes
        self.cudagraph, self.feed_back = cudagraph, fed_back
        self.graphs = {}  # (sequence length, into an empty cache) -> captured step
        self.fed_back = None  # the captured step whose inputs are already the next greedy step's
        self.caches = None
        self.reset()

    def reset(self):
        """Forget the sequence (a static buffer is kept: rows past the length are never read)."""
        self.length = 0
        self.last_token, self.fed_back = None, None
        self.caches = self.mode.new_state(self.cache_shapes, self.batch_size, self.max_len, self.dtype, self.device,
                                          self.caches)

    def text_positions(self, length):
        pos = torch.arange(self.length, self.length + length, device=self.device)
        return pos[None, :].expand(self.batch_size, length)

    @torch.no_grad()
    def step(self, x, position_ids=None):
        s = x.shape[1]
        if self.length + s > self.max_len:
            raise ValueError(f"{self.length + s} positions exceed the cache length {self.max_len}")
        if position_ids is None:
            position_ids = self.text_positions(s)
        fresh = self.length == 0 and self.first_graph is not None
        if self.cudagraph:
            graph = self.graphs.get((s, fresh)) or self._capture(x, position_ids, fresh)
            out = graph.replay(x, position_ids, self.length)
            self.fed_back = graph if graph.feeds_back and self.feed_back else None
        else:
            cache_position = torch.arange(self.length, self.length + s, device=self.device)
            out = self._run(x, position_ids, cache_position, fresh)
        self.length += s
        self.last_token = out[1]
        return out

    @torch.no_grad()
    def next_token(self):
        """One greedy step of text: the token the last step chose, fed at the next text position.
        Returns the next token ``[B]``. After a replayed one-token step the captured graph has
        already written these inputs, so the replay is the step's only work."""
        if self.fed_back is None or self.length + 1 > self.max_len:
            return self.step(self.last_token[:, None])[1]
        self.length += 1
        self.last_token = self.fed_back.replay_fed_back()
        return self.last_token

    def _run(self, x, position_ids, cache_position, fresh=False):
        graph = self.first_graph if fresh else self.graph
        logits, token, self.caches = self.mode.call(graph, x, position_ids, self.caches, self.length, cache_position)
        return logits, token

    def _capture(self, x, position_ids, fresh):
        """Capture a step of this many positions as a CUDA graph (once per length: the decode
        step, and each prefill length), to be replayed with new inputs copied in."""
        graph = _CapturedStep(self, x, position_ids, fresh)
        self.graphs[x.shape[1], fresh] = graph
        return graph


class _CapturedStep:
    """One static_v2 step of fixed length, recorded as a CUDA graph over static input buffers."""

    def __init__(self, gen, x, position_ids, fresh):
        self.x, self.position_ids = x.clone(), position_ids.clone()
        # A one-token step over token ids also writes the next greedy step's inputs (its token,
        # positions + 1) at its end, so that greedy decoding replays with no host-side work
        # between steps; replay() overwrites them for any other input.
        self.feeds_back = x.shape[1] == 1 and not x.is_floating_point()
        self.cache_position = torch.arange(gen.length, gen.length + x.shape[1], device=gen.device)
        self.offsets = torch.arange(x.shape[1], device=gen.device)
        # Warm up on a side stream (compilers compile and autotune here). Each run writes the
        # same cache rows the real step will write, so the cache stays correct.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                gen._run(self.x, self.position_ids, self.cache_position, fresh)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits, self.token = gen._run(self.x, self.position_ids, self.cache_position, fresh)
            if self.feeds_back:
                self.x.copy_(self.token.view_as(self.x))
                self.position_ids.add_(1)
                self.cache_position.add_(1)

    def replay(self, x, position_ids, start):
        self.x.copy_(x)
        self.position_ids.copy_(position_ids)
        torch.add(self.offsets, start, out=self.cache_position)
        self.graph.replay()
        return self.logits.clone(), self.token.clone()  # the next replay overwrites the static buffers

    def replay_fed_back(self):
        """Replay on the inputs the last replay wrote; the next token ``[B]`` (logits not copied)."""
        self.graph.replay()
        return self.token.clone()


def prefill(gen, x, position_ids=None, chunk=0):
    """Feed a prompt, in chunks of ``chunk`` positions if asked; returns the last step's
    ``(logits, next_token)``."""
    s = x.shape[1]
    if position_ids is None:
        position_ids = gen.text_positions(s)
    step = chunk if chunk and chunk < s else s
    for start in range(0, s, step):
        out = gen.step(x[:, start : start + step], position_ids[..., start : start + step])
    return out


def greedy(gen, first_token, num_tokens, eos_ids=(), embed=None, decode_positions=None, on_step=None):
    """Greedy decoding from the prefill's next token ``[B]``: up to ``num_tokens`` new tokens per row.

    Stops early when every row has produced an EOS id (pass no ids for a fixed length; then
    no step waits on the host). Rows that finished keep emitting EOS. ``embed`` maps tokens
    to the graph's input (identity for token-id graphs); ``decode_positions(length)`` gives
    positions for models whose positions are not the text positions (M-RoPE).
    """
    eos = torch.tensor(sorted(eos_ids), device=first_token.device, dtype=torch.long)
    token = first_token
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
        if i > 0 and embed is None and decode_positions is None:
            # the step's own choice, fed back (a finished row's later tokens are EOS regardless)
            token = gen.next_token()
            continue
        x = token[:, None] if embed is None else embed(token[:, None])
        positions = decode_positions(gen.length) if decode_positions else None
        token = gen.step(x, positions)[1]
    return torch.stack(tokens, 1)
