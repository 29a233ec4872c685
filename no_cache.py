"""'' (no cache): the graph as exported; each step recomputes the whole sequence so far, which
the generator keeps as the mode's state. The original tool's baseline, and a check on the rest."""

import torch

FIXED_SHAPES = False
FIRST_GRAPH = False


def apply(gm, batch_size, max_len, inplace=True, fresh=False):
    return gm


def new_state(shapes, batch_size, max_len, dtype, device, kept=None):
    return []  # the inputs and positions seen so far


def call(graph, inputs, state, start, cache_position):
    x, position_ids, *rows = inputs
    if state:
        x, position_ids = torch.cat([state[0], x], 1), torch.cat([state[1], position_ids], -1)
    logits, token = graph(x, position_ids, *rows)[:2]
    return logits, token, [x, position_ids]


def tensorrt_shapes(num_inputs, seq, max_len):
    return []
