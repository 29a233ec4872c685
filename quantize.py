"""Quantized weights (--quant_format): how a 16-bit weight is quantized, the function that
multiplies by it, the ``quantize`` pass that puts it in a language model's graph, and the same
layers swapped into a Hugging Face model (eval_ppl.py measures them there).

The kinds of product (``kind``), from --quant_format, --quant_algo and --weight_only:
  fp8      W8A8: FP8 E4M3 weights, a float32 scale per output channel; a prompt's activations
           quantized to FP8 per token at run time (dynamic scales)
  fp8_wo   the same weights, 16-bit activations (--weight_only)
  int8_wo  INT8 weights, symmetric, a float32 scale per output channel (--weight_only)
  int8     W8A8: the same weights, a prompt's activations quantized to INT8 per token; with
           --quant_algo smoothquant each input channel is first divided by SmoothQuant's
           factor (calibrated on text), which the weights take on instead
  int4     weight-only: unsigned 4-bit values with a scale and a minimum per group of
           --quant_group_size input channels (asymmetric round to nearest); eight columns an
           int32 word, stored input-major, [K/8, N], as are the scales and minimums, [K/group,
           N]: a kernel reads neighbouring channels' words and scales in whole lines
nvfp4 is Blackwell's, through ModelOpt and TensorRT (tensorrt_backend.py), never here. The
embedding, the norms and, unless --quant_lm_head, the LM head stay 16-bit.

How a product runs: the graph calls ``quantized_linear``, a plain function that Dynamo inlines,
so each compiled length gets its own path.
- More than DECODE_ROWS rows (a prompt): W8A8 quantizes the activations per token and runs
  on tensor cores, torch._scaled_mm (FP8) or torch._int_mm (INT8); weight-only kinds
  dequantize the weight into a 16-bit GEMM.
- Up to DECODE_ROWS rows (decode steps): speed is the bytes of weights read, and quantizing
  activations would save none, so every kind multiplies the 16-bit activations (W8A8:
  smoothed) by its weights dequantized in registers, on quant_gemv.py's Triton kernels on
  CUDA.
CPU runs the same code (the Triton kernel aside), so the tests hold every path to
``dequantize``.
"""

import importlib.util
import math

import torch
import torch.nn.functional as F

from export_llm import attribute, finish
from utils import UserError, log

aten = torch.ops.aten
FORMATS = ("fp8", "int8", "int4", "nvfp4")
ALGOS = ("max", "smoothquant")
FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
GROUP_SIZES = (128, 64, 32)  # --quant_group_size by default: the first that divides every width
SMOOTH_ALPHA = 0.5  # SmoothQuant's migration strength: half the outliers' range moves to the weights
CALIBRATION_TOKENS = 512
DECODE_ROWS = 16  # products of more rows (prompts) quantize their activations (W8A8) for tensor cores


def kind_of(config):
    """The product kind (module docstring) the run's flags ask for; None without quantization
    or where ModelOpt quantizes instead (TensorRT)."""
    if config.prequantized:  # (each product's own kind: prequantized.py)
        return "fp8"
    fmt = config.quant_format
    if not fmt or config.backend == "tensorrt":
        return None
    if fmt == "int4":
        return "int4"
    return f"{fmt}_wo" if config.weight_only else fmt


def label(quantization):
    """A run record's quantization (RunConfig.quantization) in a few words, e.g. "int4 g128";
    "" for none."""
    if not quantization:
        return ""
    words = [quantization["format"]]
    words += ["weight-only"] * (quantization["weight_only"] and quantization["format"] != "int4")
    words += ["smoothquant"] * (quantization["algo"] == "smoothquant")
    words += [f"g{quantization['group_size']}"] * bool(quantization["group_size"])
    words += ["+head"] * quantization["lm_head"]
    return " ".join(words)


def check_flags(quant_format, quant_algo, weight_only, quant_group_size, quant_lm_head, backend):
    """Refuse a combination that cannot run, in one line each."""
    given = quant_algo != "max" or weight_only or quant_group_size or quant_lm_head
    if not quant_format:
        if given:
            raise UserError("--quant_algo, --weight_only, --quant_group_size and --quant_lm_head shape "
                            "quantization: they need --quant_format")
        return
    if backend == "tensorrt":
        import tensorrt_backend

        tensorrt_backend.modelopt_preset(quant_format, weight_only, quant_algo, quant_lm_head)
    if quant_format == "nvfp4" and backend != "tensorrt":
        raise UserError("--quant_format nvfp4 runs only on Blackwell GPUs through TensorRT (--backend tensorrt)")
    if quant_algo == "smoothquant" and (quant_format != "int8" or weight_only):  # (before ModelOpt's table says so)
        raise UserError("--quant_algo smoothquant balances activations for INT8 W8A8: it needs --quant_format int8 "
                        "without --weight_only")
    if quant_group_size and quant_format != "int4":
        raise UserError(f"--quant_group_size groups INT4 weights: it has no effect with --quant_format {quant_format}")


def group_size(widths, requested):
    """The INT4 group size: ``requested`` if it divides every quantized layer's input width,
    else one line; by default the first of GROUP_SIZES that divides them all."""
    odd = sorted(w for w in widths if w % 8)
    if odd:  # (a model of such widths has yet to be seen)
        raise UserError(f"INT4 packs eight input channels a word: this model has a layer {odd[0]} wide")
    if requested:
        bad = sorted(w for w in widths if w % requested)
        if bad:
            raise UserError(f"--quant_group_size {requested} does not divide the input width {bad[0]} of this "
                            "model's layers; choose a divisor of every width")
        return requested
    for size in GROUP_SIZES:
        if all(w % size == 0 for w in widths):
            return size
    raise UserError(f"no INT4 group size of {', '.join(map(str, GROUP_SIZES))} divides every layer width "
                    f"({', '.join(map(str, sorted(widths)))}); give --quant_group_size")


def quantize_rows(x, dtype):
    """Per-row (per-token) symmetric quantization of ``x`` to FP8 or INT8: (values, float32
    scales [..., 1])."""
    limit = FP8_MAX if dtype == FP8 else 127.0
    scale = x.abs().amax(-1, keepdim=True).float().clamp(min=1e-12) / limit
    y = (x.float() / scale).clamp(-limit, limit)  # (an FP8 cast of anything past 448 is NaN)
    return (y.to(FP8) if dtype == FP8 else y.round().to(torch.int8)), scale


def quantize_weight(weight, kind, group=0, smooth=None):
    """The tensors ``quantized_linear`` reads for a 16-bit weight [N, K]: (weight, scale,
    extra). extra: INT4's group minimums, or W8A8's per-channel 1/smooth (None otherwise)."""
    w = weight.detach().float()
    if kind == "int4":
        n, k = w.shape
        grouped = w.view(n, k // group, group)
        low = grouped.amin(-1).to(weight.dtype)
        scale = ((grouped.amax(-1) - low.float()) / 15).clamp(min=1e-8).to(weight.dtype)
        # round with the scale and minimum as stored, so that dequantize reproduces the choice
        q = ((grouped - low.float()[..., None]) / scale.float()[..., None]).round().clamp(0, 15).to(torch.int32)
        q = q.view(n, k // 8, 8)
        words = q[..., 0]
        for t in range(1, 8):
            words = words | (q[..., t] << 4 * t)
        return words.t().contiguous(), scale.t().contiguous(), low.t().contiguous()
    extra = None
    if smooth is not None:
        w = w * smooth
        extra = (1 / smooth).to(weight.dtype)
    q, scale = quantize_rows(w, FP8 if kind.startswith("fp8") else torch.int8)
    return q, scale.view(-1), extra


def unpack_int4(packed):
    """[K/8, N] int32 words -> [N, K] values 0..15: word r holds columns 8r + t, t = 0..7, in
    its bits 4t to 4t + 3."""
    shifts = 4 * torch.arange(8, device=packed.device, dtype=torch.int32)
    return ((packed.t()[..., None] >> shifts) & 15).reshape(packed.shape[1], -1)


def dequantize(weight, scale, extra, kind, dtype):
    """The 16-bit weight [N, K] a quantized product multiplies by (W8A8: in the smoothed input's
    space, which ``extra`` scales the input into). INT4's scales and minimums are [K/group, N]."""
    if kind == "int4":
        groups = scale.shape[0]
        q = unpack_int4(weight)
        w = q.view(q.shape[0], groups, -1).float() * scale.t().float()[..., None] + extra.t().float()[..., None]
        return w.view(q.shape).to(dtype)
    if kind.startswith("fp8_block:"):  # a pre-quantized checkpoint's scale per block ("fp8_block:128x128")
        rows, cols = map(int, kind.partition(":")[2].split("x"))
        n, k = weight.shape
        scales = scale.repeat_interleave(rows, 0)[:n].repeat_interleave(cols, 1)[:, :k]
        return (weight.float() * scales).to(dtype)
    return (weight.float() * scale[:, None]).to(dtype)


def _mm_dtype(x):
    """torch._scaled_mm's output type: row-wise scales need BF16 on CUDA."""
    return torch.bfloat16 if x.is_cuda else x.dtype


def quantized_linear(x, weight, scale, extra, bias, kind, gemv=""):
    """``linear(x, W) + bias`` for a weight quantized by ``quantize_weight``; the path per
    shape is in the module's docstring. ``gemv``: products of up to 16 rows run on
    quant_gemv.py's kernels (CUDA), through ``tllm::dequant_product`` ("triton_op") or its twin
    launched with programmatic dependent launch ("pdl")."""
    dtype, width, n = x.dtype, x.shape[-1], weight.shape[1 if kind == "int4" else 0]
    rows = math.prod(x.shape[:-1])
    if kind in ("fp8", "int8") and extra is not None:
        x = x * extra  # SmoothQuant: the weights took these factors on
    if kind in ("fp8", "int8") and rows > DECODE_ROWS and (not x.is_cuda or (width % 16 == 0 and n % 16 == 0)):
        q, x_scale = quantize_rows(x, FP8 if kind == "fp8" else torch.int8)
        q, x_scale = q.reshape(rows, width), x_scale.reshape(rows, 1)
        if kind == "fp8":
            y = torch._scaled_mm(q, weight.t(), scale_a=x_scale, scale_b=scale.view(1, -1), out_dtype=_mm_dtype(x))
        else:
            y = torch._int_mm(q, weight.t()).float() * x_scale * scale
        y = y.to(dtype).view(*x.shape[:-1], n)
    elif gemv and rows <= DECODE_ROWS and not kind.startswith("fp8_block:"):
        group = width // scale.shape[0] if kind == "int4" else 0
        op = torch.ops.tllm.dequant_product_pdl if gemv == "pdl" else torch.ops.tllm.dequant_product
        partial = op(x.reshape(rows, width).contiguous(), weight, scale, extra if kind == "int4" else None, group)
        y = partial.sum(0).to(dtype).view(*x.shape[:-1], n)
    elif kind == "int4" or kind.startswith("fp8_block:"):
        y = F.linear(x, dequantize(weight, scale, extra, kind, dtype))
    else:  # INT8 / FP8 dequantized into a 16-bit product: weight-only prompts, and rows off the Triton kernel
        y = (F.linear(x, weight.to(dtype)).float() * scale).to(dtype)
    return y if bias is None else y + bias


quantized_linear.is_product = True  # layer_split: a piece may end after it, as after any product


def _products(gm, lm_head):
    """(node, weight target, transposed) of each product by a weight attribute: ``linear(x, W[,
    b])``, and ``addmm(b, x, W)`` (GPT-2's Conv1D, W stored [K, N]). The LM head, the last
    product, only where asked."""
    found = []
    for node in gm.graph.nodes:
        if node.target is aten.linear.default and getattr(node.args[1], "op", None) == "get_attr":
            found.append((node, node.args[1].target, False))
        elif node.target is aten.addmm.default and not node.kwargs and getattr(node.args[2], "op", None) == "get_attr":
            found.append((node, node.args[2].target, True))
    return found if lm_head else found[:-1]


def smoothing(activation_amax, weight):
    """SmoothQuant's per-input-channel factor for a weight [N, K] and the calibrated largest
    magnitude of each of its K input channels."""
    weight_amax = weight.detach().abs().amax(0).float().clamp(min=1e-5)
    factor = activation_amax.float().clamp(min=1e-5).pow(SMOOTH_ALPHA) / weight_amax.pow(1 - SMOOTH_ALPHA)
    return factor.clamp(min=1e-5)


def _module_name(gm, target):
    """The Hugging Face module a weight attribute belongs to (the first one it fuses)."""
    source = gm.meta.get("fused_from", {}).get(target, [target])[0]
    return source.rpartition(".")[0]


def apply(gm, config):
    """Replace the graph's products by weights with ``quantized_linear`` over quantized copies
    (module docstring), recorded in ``gm.meta["quantized_from"]`` so that build_cache can
    quantize again from the model's weights instead of storing them. W8A8 with SmoothQuant reads
    ``gm.meta["activation_amax"]`` ({module name: [K]}, ``calibrate``). Returns a note."""
    kind = kind_of(config)
    products = _products(gm, config.quant_lm_head)
    weights = {target: attribute(gm, target) for _, target, _ in products}
    if config.prequantized:  # only the checkpoint's FP8 products, as they are
        products = [p for p in products if hasattr(weights[p[1]], "prequantized")]
    widths = {w.shape[0] if transposed else w.shape[1] for (_, target, transposed) in products
              for w in [weights[target]]}
    group = group_size(widths, config.quant_group_size) if kind == "int4" and products else 0
    amax = gm.meta.pop("activation_amax", None)
    product = quantized_linear
    if config.on_cuda and importlib.util.find_spec("triton") is not None:
        import quant_gemv

        if quant_gemv.applies(kind, group, config.dtype):
            pdl = config.cudagraph and config.kernel_pdl  # (the same choice as passes.py's for our other kernels)
            product = quant_gemv.quantized_linear_pdl if pdl else quant_gemv.quantized_linear
    recipes, made = gm.meta.setdefault("quantized_from", {}), {}
    for node, target, transposed in products:
        prequantized = getattr(weights[target], "prequantized", None)
        if prequantized is not None and (target, transposed) not in made:  # the model's own buffers, by name
            made[target, transposed] = [_register(gm, f"quantized_{len(made)}_{part}", t)
                                        for part, t in enumerate(prequantized[:3])]
        if (target, transposed) not in made:
            weight = weights[target].t() if transposed else weights[target]
            smooth = smoothing(amax[_module_name(gm, target)].to(weight.device), weight) \
                if config.quant_algo == "smoothquant" else None
            names = []
            for part, tensor in enumerate(quantize_weight(weight, kind, group, smooth)):
                if tensor is None:
                    names.append(None)
                    continue
                name = f"quantized_{len(made)}_{part}"
                gm.register_buffer(name, tensor)
                recipes[name] = (target, transposed, kind, group, part, smooth)
                names.append(name)
            made[target, transposed] = names
        if transposed:  # addmm(b, x, W)
            bias, x = node.args[:2]
        else:
            x, bias = node.args[0], node.args[2] if len(node.args) > 2 else None
        with gm.graph.inserting_before(node):
            attrs = []
            for name in made[target, transposed]:
                attrs.append(None if name is None else gm.graph.get_attr(name))
                if name is not None:
                    attrs[-1].meta["val"] = gm.get_buffer(name)
            new = gm.graph.call_function(product, (x, *attrs, bias, prequantized[3] if prequantized else kind))
        new.meta.update(node.meta)
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
    finish(gm)
    detail = f", group {group}" if group else ", SmoothQuant" if config.quant_algo == "smoothquant" else ""
    return f"{len(products)} products, {kind}{detail}{', LM head too' if config.quant_lm_head else ''}"


def _register(gm, name, tensor):
    if tensor is None:
        return None
    gm.register_buffer(name, tensor)
    return name


def release_replaced(module, graphs, config):
    """Free the 16-bit weights that quantized copies replaced, which the graphs no longer read:
    each becomes a placeholder of no memory (a zero expanded to its shape, type kept for the
    bandwidth figures), in ``module`` and the graphs alike (they share the parameters). Not
    where PyTorch baselines run the Hugging Face model itself, nor for a weight that shares
    memory with one a graph reads (an LM head tied to the embedding). Returns the bytes freed."""
    if not kind_of(config) or config.prequantized or config.enable_pytorch_run:
        return 0
    attrs = [attribute(m, n.target) for gm in graphs.values() for m in gm.modules()
             if isinstance(m, torch.fx.GraphModule) for n in m.graph.nodes if n.op == "get_attr"]  # (pieces too)
    read = {t.untyped_storage().data_ptr() for t in attrs if isinstance(t, torch.Tensor)}
    replaced = []
    for gm in graphs.values():
        fused = gm.meta.get("fused_from", {})
        for target, *_ in gm.meta.get("quantized_from", {}).values():
            replaced += [module.get_parameter(name) for name in fused.get(target, [target])]
            if target in fused and hasattr(gm, target):
                replaced.append(gm.get_parameter(target))
    freed = 0
    for p in {id(p): p for p in replaced}.values():
        storage = p.untyped_storage()
        if storage.data_ptr() in read or storage.nbytes() == p.element_size():
            continue  # (read by a graph, or a placeholder already)
        freed += p.numel() * p.element_size()
        p.data = torch.zeros((), dtype=p.dtype, device=p.device).expand(p.shape)
    return freed


def requantize(weight, transposed, kind, group, smooth):
    """``quantize_weight`` for a recipe of ``gm.meta["quantized_from"]`` (build_cache)."""
    return quantize_weight(weight.t() if transposed else weight, kind, group, smooth)


@torch.no_grad()
def calibrate(module, ids):
    """{module name: the largest magnitude of each input channel} of every Linear in ``module``
    while it reads ``ids`` [1, L] (``module(ids, position_ids)``, as export calls it)."""
    amax, hooks = {}, []

    def record(name):
        def hook(_, args):
            x = args[0].detach()
            seen = x.abs().reshape(-1, x.shape[-1]).amax(0).float()
            amax[name] = seen if name not in amax else torch.maximum(amax[name], seen)
        return hook

    for name, child in module.named_modules():
        if isinstance(child, torch.nn.Linear) or type(child).__name__ == "Conv1D":
            hooks.append(child.register_forward_pre_hook(record(name)))
    try:
        module(ids, torch.arange(ids.shape[1], device=ids.device)[None])
    finally:
        for hook in hooks:
            hook.remove()
    return amax


def calibration_ids(tokenizer, vocab_size, device, tokens=CALIBRATION_TOKENS):
    """SmoothQuant's calibration text: the last ``tokens`` tokens of Hamlet (eval_ppl scores its
    beginning), or random ids for a model without a tokenizer."""
    if tokenizer is None:
        log("SmoothQuant calibrates on random token ids: this model has no tokenizer here")
        return torch.randint(0, vocab_size, (1, tokens), device=device)
    import eval_ppl

    ids = tokenizer(eval_ppl.load_text()).input_ids[-tokens:]
    return torch.tensor([ids], device=device)


class QuantizedLinear(torch.nn.Module):
    """A Linear (or GPT-2 Conv1D) of a Hugging Face model with its weight quantized
    (eval_ppl.py): the same ``quantized_linear`` the graph calls."""

    def __init__(self, tensors, bias, kind):
        super().__init__()
        for name, tensor in zip(("weight", "scale", "extra"), tensors):
            self.register_buffer(name, tensor)
        self.bias, self.kind = bias, kind

    def forward(self, x):
        return quantized_linear(x, self.weight, self.scale, self.extra, self.bias, self.kind)


def _weight(module):
    """A Linear's or Conv1D's weight as [N, K]."""
    return module.weight.t() if type(module).__name__ == "Conv1D" else module.weight


def _linears(module, head, lm_head):
    """(name, module) of the Linears and Conv1Ds in ``module`` that quantization replaces."""
    return [(name, m) for name, m in module.named_modules()
            if (isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D") and (lm_head or m is not head)]


def _replaced(model, config):
    """The [N, K] weights of a Hugging Face model that quantization replaces."""
    return [_weight(m) for _, m in _linears(model, model.get_output_embeddings(), config.quant_lm_head)]


def recorded(config, model):
    """RunConfig.quantization for the run record, with INT4's group size as chosen for
    ``model`` where the flags left it to the widths."""
    record = config.quantization
    if record and kind_of(config) == "int4" and not record["group_size"]:
        record = {**record, "group_size": group_size({w.shape[1] for w in _replaced(model, config)}, 0)}
    return record


def weight_bytes(model, config):
    """(bytes of the 16-bit weights that quantization replaces, bytes of what replaces them)
    for a Hugging Face model: what a decode step reads less (benchmark.py's bandwidth floor)."""
    kind = kind_of(config)
    if kind is None:
        return 0, 0
    weights = _replaced(model, config)
    before = sum(w.numel() * w.element_size() for w in weights)
    if kind == "int4":
        group = group_size({w.shape[1] for w in weights}, config.quant_group_size)
        return before, sum(w.numel() // 2 + 2 * (w.numel() // group) * w.element_size() for w in weights)
    smoothed = config.quant_algo == "smoothquant"
    return before, sum(w.numel() + 4 * w.shape[0] + smoothed * w.shape[1] * w.element_size() for w in weights)


def quantize_model(model, config, ids=None):
    """Swap each Linear of a Hugging Face model (not the LM head unless asked) for a
    QuantizedLinear, quantized as the ``quantize`` pass quantizes the graph's products; ``ids``
    calibrate SmoothQuant. Returns a note."""
    import prequantized as checkpoint
    from export_llm import LastLogits

    kind, wrapped = kind_of(config), LastLogits(model)
    linears = _linears(wrapped, model.get_output_embeddings(), config.quant_lm_head)
    group = group_size({_weight(m).shape[1] for _, m in linears}, config.quant_group_size) if kind == "int4" else 0
    amax = calibrate(wrapped, ids) if config.quant_algo == "smoothquant" else {}
    for name, linear in linears:
        prequantized = checkpoint.of(linear)
        if prequantized is not None or config.prequantized:  # a checkpoint's own FP8 Linears only
            if prequantized is not None:
                parent, _, child = name.rpartition(".")
                quantized = QuantizedLinear(prequantized[:3], linear.bias, prequantized[3])
                setattr(wrapped.get_submodule(parent), child, quantized)
            continue
        smooth = None
        if amax:  # one factor per input, as for the graph's fused q/k/v and gate/up products
            sharing = [_weight(m) for other, m in linears if torch.equal(amax[other], amax[name])]
            smooth = smoothing(amax[name].to(linear.weight.device), torch.cat(sharing))
        parent, _, child = name.rpartition(".")
        quantized = QuantizedLinear(quantize_weight(_weight(linear), kind, group, smooth), linear.bias, kind)
        setattr(wrapped.get_submodule(parent), child, quantized)
    return f"{len(linears)} products, {kind}" + (f", group {group}" if group else "")
