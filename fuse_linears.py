"""Merge the linear layers that read the same input (q/k/v projections, gate/up) into one
GEMM whose output is split: one kernel launch instead of two or three, which is what a
latency-bound decode step pays for.

The fused weight becomes the only copy: the original parameters are re-pointed at slices of
it, so memory does not grow and the Hugging Face model (used by baselines) stays equal.
"""

import torch

from export_llm import finish

aten = torch.ops.aten


def _linear_users(node):
    """The ``linear(node, W[, b])`` users of ``node`` whose weights are plain attributes."""
    users = []
    for user in node.users:
        if user.target is aten.linear.default and user.args[0] is node:
            params = user.args[1:]
            if all(getattr(p, "op", None) == "get_attr" for p in params) and \
                    not hasattr(node.graph.owning_module.get_parameter(params[0].target), "prequantized"):
                users.append(user)  # (a pre-quantized checkpoint's FP8 weights stay apart: prequantized.py)
    with_bias = [u for u in users if len(u.args) == 3]
    return with_bias if len(with_bias) > len(users) - len(with_bias) else [u for u in users if len(u.args) == 2]


def fuse(tensors):
    """The tensors concatenated along dim 0, as a parameter that is then their only copy."""
    fused = torch.cat([t.detach() for t in tensors], 0)
    offset = 0
    for t in tensors:
        t.data = fused[offset : offset + t.shape[0]]
        offset += t.shape[0]
    return torch.nn.Parameter(fused, requires_grad=False)


def _fuse(gm, targets, name):
    gm.register_parameter(name, fuse([gm.get_parameter(t) for t in targets]))
    gm.meta.setdefault("fused_from", {})[name] = list(targets)  # for build_cache: weights by reference
    return name


def apply(gm):
    count = 0
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    for node in list(gm.graph.nodes):
        users = _linear_users(node)
        if len(users) < 2:
            continue
        first = min(users, key=order.get)
        param_lists = list(zip(*(u.args[1:] for u in users)))  # (weights...), (biases...)
        sizes = [gm.get_parameter(w.target).shape[0] for w in param_lists[0]]
        with gm.graph.inserting_before(first):
            attrs = [
                gm.graph.get_attr(_fuse(gm, [p.target for p in params], f"fused_linear_{count}_{i}"))
                for i, params in enumerate(param_lists)
            ]
            out = gm.graph.call_function(aten.linear.default, (node, *attrs))
            bounds = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
            parts = [gm.graph.call_function(aten.slice.Tensor, (out, -1, a, b)) for a, b in zip(bounds, bounds[1:])]
        for user, part in zip(users, parts):
            user.replace_all_uses_with(part)
            gm.graph.erase_node(user)
        count += 1
    gm.meta["fused_linears"] = count
    return finish(gm)
