"""The graph rewrites between torch.export and the compiler, in the order they run, and when
each runs for a given RunConfig. This is the one place that decides; backends compile what
they are given.

A language model's exported graph first gets the ``export`` passes, once. A cache mode with a
first-prefill graph (static_v2) then copies it (sharing the weights), and each graph gets the
``graph`` passes that hold for its kind: ``step`` (decode steps and later prompt chunks),
``first`` (a prompt into an empty cache) or ``vision`` (a VLM's vision encoder, which gets no
export passes).

For ``--backend inductor --cudagraph --cache static_v2`` on CUDA, ``plan`` gives:
export: next_token, fuse_linears; step graph: cache, split_k_decode, gated_down, split_bias,
layer_split; first graph: cache, layer_split (and split_bias with --tune all). Sampling adds
``sample`` after ``next_token``; a batch of more than one row adds ``padding`` after ``cache``;
--quant_format adds ``quantize`` after ``fuse_linears``.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch

import backends
import cache_modes
import config
import export_llm
import fuse_linears
import layer_split
import padding
import quantize
import sampling


@dataclass(frozen=True)
class Graph:
    """What a pass may need to know about the graph it rewrites."""

    config: object  # RunConfig
    max_len: int
    kind: str = "step"  # "step", "first" (a prompt into an empty cache) or "vision"

    @property
    def language(self):
        return self.kind != "vision"


@dataclass(frozen=True)
class Pass:
    name: str
    stage: str  # "export": once, on the exported graph; "graph": on each graph of the cache mode
    when: Callable[[Graph], bool]
    run: Callable[[torch.fx.GraphModule, Graph], object]  # returns the rewritten graph, or a count
    why: str


def _split_k_decode(gm, g):
    import decode_attention  # needs triton

    return decode_attention.use_split_k_decode(gm, pdl=g.config.cudagraph and g.config.kernel_pdl)


def _gated_down(gm, g):
    import gated_down  # needs triton

    return gated_down.use_gated_down(gm, pdl=g.config.cudagraph and g.config.kernel_pdl)


def _inductor_on_cuda(g):
    return g.config.backend == "inductor" and g.config.on_cuda


def tuned(g):
    """Inductor tunes this graph's kernels (--tune): costs compile time, pays in decode."""
    return g.config.tune == "all" or (g.config.tune == "decode" and g.kind == "step")


PASSES = (
    Pass("next_token", "export", lambda g: True, lambda gm, g: export_llm.add_next_token(gm),
         "last position's logits as float32 plus their argmax: decode needs nothing after the graph"),
    Pass("sample", "export", lambda g: g.config.sampler,
         lambda gm, g: sampling.apply(gm, g.config.batch_size, kernels=g.config.batch_size <= sampling.KERNEL_ROWS
                                      and config.triton_kernels_available(g.config.torch_device, g.config.backend)),
         "temperature, top-k and top-p drawn in the graph: a replayed decode step needs nothing from the host"),
    Pass("fuse_linears", "export", lambda g: True, lambda gm, g: fuse_linears.apply(gm).meta["fused_linears"],
         "q/k/v and gate/up as one GEMM each: one launch, not two or three, in a latency-bound step"),
    Pass("quantize", "export", lambda g: g.language and quantize.kind_of(g.config) is not None,
         lambda gm, g: quantize.apply(gm, g.config),
         "FP8, INT8 or INT4 weights: a batch-1 decode step reads every weight, so fewer bytes are less time"),
    Pass("cache", "graph", lambda g: g.language and g.config.cache != "",
         lambda gm, g: cache_modes.MODES[g.config.cache].apply(
             gm, g.config.batch_size, g.max_len, inplace=g.config.backend != "tensorrt", fresh=g.kind == "first"),
         "the KV cache as graph inputs (and outputs where the backend cannot write in place)"),
    Pass("padding", "graph", lambda g: g.language and g.config.batch_size > 1,
         lambda gm, g: padding.apply(gm, g.config.batch_size),
         "prompts of different lengths, left-padded: each row's attention skips its padding"),
    Pass("split_k_decode", "graph", lambda g: g.config.decode_attention == "triton" and g.kind == "step",
         _split_k_decode,
         "one-token attention on the split-K Triton kernel: SDPA keeps most SMs idle at batch 1"),
    Pass("gated_down", "graph", lambda g: g.config.gated_down and g.kind == "step", _gated_down,
         "the down projection of a gated MLP as one Triton kernel: Inductor's re-reads gate/up per row block"),
    Pass("split_bias", "graph", lambda g: _inductor_on_cuda(g) and g.config.split_bias and tuned(g),
         lambda gm, g: backends.split_bias(gm),
         "tuned Inductor fuses a one-row product without bias into its neighbours, not one with bias"),
    Pass("layer_split", "graph",
         lambda g: g.language and g.config.backend == "inductor" and g.config.cudagraph and g.config.layer_split,
         lambda gm, g: layer_split.split_by_layer(gm),
         "Inductor compiles each distinct layer piece once; only a CUDA graph hides the pieces' host time"),
)


def applies(stage, graph):
    return [p for p in PASSES if p.stage == stage and p.when(graph)]


def run(stage, gm, graph):
    """Apply the passes of ``stage`` that hold for ``graph``; returns the graph (a pass may
    replace it) and a note per pass for the log."""
    notes = []
    for p in applies(stage, graph):
        out = p.run(gm, graph)
        if isinstance(out, torch.fx.GraphModule):
            gm = out
            notes.append(p.name)
        else:
            notes.append(f"{p.name} ({out})")
    return gm, notes


def plan(config):
    """The names of the passes that run for ``config``, per graph of a language model."""
    out = {"export": [p.name for p in applies("export", Graph(config, 0))],
           "step": [p.name for p in applies("graph", Graph(config, 0))]}
    if cache_modes.MODES[config.cache].FIRST_GRAPH:
        out["first"] = [p.name for p in applies("graph", Graph(config, 0, kind="first"))]
    return out
