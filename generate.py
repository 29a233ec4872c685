"""Generation over a rewritten graph: owns the KV cache for each cache mode and the graph's row
inputs (padding, sampling settings), runs prefill (whole or in chunks) and decode steps,
optionally replays each step as a CUDA graph, and turns a batch of prompts into each row's
new tokens, handing them out as they come."""

import collections

import torch

import cache_modes
from sampling import ROW_INPUTS, Sampling, row_values

# A row input's value when nobody set it: no padding, greedy.
ROW_DEFAULTS = {"key_start": 0, **{name: values[0] for name, values in row_values([Sampling()]).items()}}
ROW_DTYPES = {"key_start": torch.int64, **dict(ROW_INPUTS)}
MAX_PROMPT_GRAPHS = 16  # captured prompt lengths kept (CUDA graphs)


class Generator:
    """Runs ``graph(*model_inputs, *cache_inputs)`` one step at a time.

    ``step(x, position_ids)`` feeds the next S positions (``x`` is token ids ``[B, S]`` or
    embeddings ``[B, S, H]``; positions ``[B, S]`` or ``[3, B, S]``, defaulting to the next
    text positions of each row) and returns float32 logits of the last position ``[B, V]`` and
    the next token ``[B]`` (their argmax, or a sample, computed in the graph). ``cache`` names
    the mode (``cache_modes.MODES``) that owns the cache's buffers and the graph's calling
    convention. ``row_inputs`` names the graph's per-row inputs (``gm.meta["row_inputs"]``),
    held in ``self.rows`` and set with ``set_rows``.
    """

    def __init__(self, graph, cache_shapes, cache, batch_size, max_len, dtype, device, cudagraph=False,
                 first_graph=None, fed_back=True, row_inputs=()):
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
        # (sequence length, into an empty cache) -> captured step, least recently used first
        self.graphs = collections.OrderedDict()
        self.fed_back = None  # the captured step whose inputs are already the next greedy step's
        self.caches = None
        # Captured steps read these tensors: set_rows writes into them, never replaces them.
        self.rows = {name: torch.full((batch_size,), ROW_DEFAULTS[name], dtype=ROW_DTYPES[name], device=device)
                     for name in row_inputs}
        self.pads = self.rows.get("key_start", torch.zeros(batch_size, dtype=torch.int64, device=device))
        self.reset()

    def reset(self):
        """Forget the sequence (a static buffer is kept: rows past the length are never read)."""
        self.length = 0
        self.last_token, self.fed_back = None, None
        self.pads.zero_()
        self.caches = self.mode.new_state(self.cache_shapes, self.batch_size, self.max_len, self.dtype, self.device,
                                          self.caches)

    def set_rows(self, **values):
        """Per-row values of the graph's row inputs (lists of ``batch_size``); an input this
        graph does not take must be at its default (a greedy build cannot sample)."""
        for name, given in values.items():
            if name in self.rows:
                self.rows[name].copy_(torch.tensor(given, dtype=ROW_DTYPES[name]))
            elif any(v != ROW_DEFAULTS[name] for v in given):
                built = "for one row" if name == "key_start" else "without sampling"
                raise ValueError(f"this build has no {name} input (built {built})")

    def text_positions(self, length):
        """Each row's next positions: its slots less its padding (a pad at 0: no one sees it)."""
        pos = torch.arange(self.length, self.length + length, device=self.device)
        return (pos[None, :] - self.pads[:, None]).clamp_min(0)

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
            self.graphs.move_to_end((s, fresh))
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
        inputs = (x, position_ids, *self.rows.values())
        logits, token, self.caches = self.mode.call(graph, inputs, self.caches, self.length, cache_position)
        return logits, token

    def _capture(self, x, position_ids, fresh):
        """Capture a step of this many positions as a CUDA graph (once per length: the decode
        step, and each prefill length), to be replayed with new inputs copied in."""
        graph = _CapturedStep(self, x, position_ids, fresh)
        self.graphs[x.shape[1], fresh] = graph
        # Each prompt length holds its own graph and memory pool: a server or a chat, which see
        # many lengths, keep the most recent few (a one-token step is never let go).
        prompts = [key for key in self.graphs if key[0] > 1]
        for key in prompts[: max(0, len(prompts) - MAX_PROMPT_GRAPHS)]:
            del self.graphs[key]
        return graph


class _CapturedStep:
    """One static_v2 step of fixed length, recorded as a CUDA graph over static input buffers."""

    def __init__(self, gen, x, position_ids, fresh):
        self.x, self.position_ids = x.clone(), position_ids.clone()
        # A one-token decode step over token ids also writes the next step's inputs (its token,
        # positions + 1) at its end, so that decoding replays with no host-side work between
        # steps; replay() overwrites them for any other input. Not a one-token prompt into an
        # empty cache: that graph attends over its new rows only and cannot decode.
        self.feeds_back = x.shape[1] == 1 and not x.is_floating_point() and not fresh
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


def steps(gen, token, count, embed=None, decode_positions=None):
    """The prefill's next token ``[B]``, then the tokens of up to ``count - 1`` decode steps, as
    device tensors: nothing here waits for the device, so a consumer that stops reading stops
    the decoding. ``embed`` maps tokens to the graph's input (token-id graphs: none);
    ``decode_positions(length)`` gives positions for models whose positions are not the text
    positions (M-RoPE)."""
    for i in range(count):
        yield token
        if i == count - 1:
            return
        if embed is None and decode_positions is None:
            token = gen.next_token()  # a replayed step has fed itself its own choice
            continue
        x = token[:, None] if embed is None else embed(token[:, None])
        token = gen.step(x, decode_positions(gen.length) if decode_positions else None)[1]


def _on_host(token):
    """Start copying a step's tokens to the host; the returned function waits for that copy
    only (not for steps enqueued after it) and gives a list."""
    if token.device.type != "cuda":
        return token.tolist
    host = torch.empty(token.shape, dtype=token.dtype, pin_memory=True)
    host.copy_(token, non_blocking=True)
    copied = torch.cuda.Event()
    copied.record()
    return lambda: (copied.synchronize(), host.tolist())[1]


def collect(token_steps, limits, eos_ids=(), on_step=None):
    """Each row's new tokens from ``steps(...)``, up to and including its EOS, at most
    ``limits[row]`` of them (rows with a limit of 0 take none). Step i is read while step i + 1
    runs, so the host's reading, stopping checks and ``on_step`` cost the device no time; one
    step past the end is wasted. ``on_step(tokens)``: per step, each row's new token or None
    for a row already done; it may return rows to stop now."""
    eos = set(eos_ids)
    out = [[] for _ in limits]
    done = [limit == 0 for limit in limits]

    def take(tokens):
        fresh = [None if done[r] else t for r, t in enumerate(tokens[: len(limits)])]
        for r, t in enumerate(fresh):
            if t is not None:
                out[r].append(t)
                done[r] = t in eos or len(out[r]) >= limits[r]
        for r in (on_step(fresh) or ()) if on_step else ():
            done[r] = True
        return all(done)

    pending = None
    for token in token_steps:
        ready = _on_host(token)
        if pending is not None and take(pending()):
            pending = None
            break
        pending = ready
    if pending is not None and not all(done):
        take(pending())
    return out


@torch.no_grad()
def generate(gen, prompts, num_tokens, eos_ids=(), sampling=Sampling(), on_step=None, chunk=0, keep=False):
    """New tokens for a batch of prompts (token-id lists, at most ``gen.batch_size``).

    Prompts of different lengths are left-padded (the graph's ``padding`` pass hides the pads);
    a batch with fewer prompts than rows fills the rest with copies that take no tokens.
    ``num_tokens`` and ``sampling`` are one for all rows or one per prompt. Each row stops at
    an id of ``eos_ids`` (kept) or its limit. ``keep`` (a batch of one): the prompt continues
    the sequence in the cache rather than starting anew; afterwards the cache holds the prompt
    and the new tokens, the last one too where a row stopped at EOS (``collect`` reads a step
    late), so ``gen.length`` says how many. ``on_step``: as in ``collect``.
    """
    rows = len(prompts)
    if not 0 < rows <= gen.batch_size or not all(prompts):
        raise ValueError(f"{rows} prompts (each non-empty) for a batch of {gen.batch_size}")
    limits = list(num_tokens) if isinstance(num_tokens, (list, tuple)) else [num_tokens] * rows
    settings = list(sampling) if isinstance(sampling, (list, tuple)) else [sampling] * rows
    if keep and gen.batch_size != 1:
        raise ValueError("keep continues one sequence: it needs a batch of one")
    longest, start = max(map(len, prompts)), gen.length if keep else 0
    if start + longest + max(limits) - 1 > gen.max_len:
        raise ValueError(f"{start + longest} positions and {max(limits)} new tokens exceed the cache length "
                         f"{gen.max_len}")
    spare = gen.batch_size - rows
    prompts, limits = [*prompts, *[prompts[-1]] * spare], limits + [0] * spare
    settings += settings[-1:] * spare
    pads = [longest - len(p) for p in prompts]
    # (a pad's id does not matter: no real position sees it)
    ids = torch.tensor([[p[0]] * pad + list(p) for p, pad in zip(prompts, pads)], device=gen.device)
    if not keep:
        gen.reset()
    gen.set_rows(key_start=pads, **row_values(settings))
    _, token = prefill(gen, ids, chunk=chunk)
    return collect(steps(gen, token, max(limits)), limits, eos_ids, on_step)[:rows]
