"""Split a rewritten graph into one piece per decoder layer, so that a compiler compiles each
distinct piece once: the middle layers of a model are the same graph over other weights.

A piece runs from just after one layer's last matrix product (or attention) to the same point
of the next layer, so the residual add that ends a layer, the next layer's norm and its first
projection stay in one piece, where Inductor fuses them as it did in the whole graph. The
piece before the first layer's products also holds the embedding and the rotary tables; the
last one holds the final norm, the LM head and the next-token argmax. Values that cross a
boundary, weights included, are the pieces' inputs (``torch.fx.passes.split_module``).
"""

import hashlib

import torch
from torch.fx.passes.split_module import split_module

aten = torch.ops.aten

PRODUCTS = (aten.linear.default, aten.mm.default, aten.addmm.default, aten.bmm.default)


def _module_layer(node):
    """The module path up to its first index (``model.layers.3.mlp`` -> ``model.layers.3``),
    None outside indexed modules, or ``...`` when the node has no path (our passes' nodes)."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return ...
    parts = list(stack.values())[-1][0].split(".")
    return next((".".join(parts[: i + 1]) for i, part in enumerate(parts) if part.isdigit()), None)


def _is_anchor(node):
    """A matrix product (a quantized one too) or one of our ops (attention, gated down
    projection): where a piece may end."""
    if node.op != "call_function":
        return False
    return node.target in PRODUCTS or getattr(node.target, "namespace", None) == "tllm" or \
        getattr(node.target, "is_product", False)


def piece_of_nodes(gm):
    """{node: piece number}: each node goes with the next anchor; consecutive anchors of one
    layer (or of none) make one piece. Numbers grow along the graph's order, so no piece
    depends on a later one."""
    layer, order = {}, {}
    for i, node in enumerate(gm.graph.nodes):
        order[node] = i
        own = _module_layer(node) if node.op == "call_function" else None
        if own is ...:  # a pass's node belongs to the layer of its latest input
            inputs = [n for n in node.all_input_nodes if layer.get(n) is not None]
            own = layer[max(inputs, key=order.get)] if inputs else None
        layer[node] = own
    anchor_piece, number, previous = {}, 0, None
    for node in gm.graph.nodes:
        if _is_anchor(node):
            number += layer[node] != previous
            previous = layer[node]
            anchor_piece[node] = number
    piece, following = {}, number  # what follows the last anchor joins its piece
    for node in reversed(gm.graph.nodes):
        following = anchor_piece.get(node, following)
        piece[node] = following
    return piece


def split_by_layer(gm):
    """The graph as a GraphModule that calls one submodule (``submod_N``) per piece, in order."""
    piece = piece_of_nodes(gm)
    split = split_module(gm, gm, piece.__getitem__, keep_original_order=True)
    # Which pieces are equal, decided now: a graph loaded from the build cache has no node meta.
    keys = {name: hashlib.sha256(signature(module).encode()).hexdigest() for name, module in pieces(split)}
    split.meta.update(gm.meta, layer_split=True, piece_keys=keys)
    return split


def is_split(gm):
    return bool(getattr(gm, "meta", {}).get("layer_split"))


def pieces(split):
    return [(name, module) for name, module in split.named_children() if name.startswith("submod_")]


def signature(piece):
    """A piece's graph as text, up to node names: pieces with equal signatures compute the same
    function of their inputs (input shapes, dtypes and strides included)."""
    index = {}
    lines = []
    for i, node in enumerate(piece.graph.nodes):
        index[node] = i
        args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), lambda n: f"%{index[n]}")
        val = node.meta.get("val")
        if node.op == "placeholder":
            meta = (tuple(val.shape), val.dtype, val.stride()) if isinstance(val, torch.Tensor) else val
            lines.append(f"input {meta}")
        elif node.op in ("get_attr", "call_module"):  # only submodules stay attributes: by identity
            lines.append(f"{node.op} {id(piece.get_submodule(node.target))} {args} {kwargs}")
        else:
            lines.append(f"{node.op} {node.target} {args} {kwargs}")
    return "\n".join(lines)


def compile_pieces(split, compile_piece):
    """Compile each distinct piece of ``split`` once with ``compile_piece(module)`` and share
    it among the pieces equal to it (in place). Returns (pieces, distinct)."""
    compiled = {}
    all_pieces = pieces(split)
    for name, module in all_pieces:
        key = split.meta["piece_keys"][name]
        if key not in compiled:
            compiled[key] = compile_piece(module)
        setattr(split, name, compiled[key])
    return len(all_pieces), len(compiled)
