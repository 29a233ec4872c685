"""Quantized weights (quantize.py): each kind's product against a PyTorch dequantize-then-matmul
reference on every path (one row, several, more than 16; the Triton kernel for decode steps
under Triton's interpreter without a GPU), weights rounded to nearest, the
``quantize`` pass against the same layers swapped into the Hugging Face model (teacher-forced
logits at prefill and 40 decode steps, every cache mode, GPT-2's Conv1D too), the layer split,
the build cache, the 16-bit weights a build frees, eval_ppl, and each bad flag in one line."""

import copy
import dataclasses
import sys

import pytest
import torch
import torch.nn.functional as F

import build_cache
import eval_ppl
import layer_split
import quantize
import run_llm
from export_llm import LastLogits
from generate import prefill
from pipeline import build_generator
from tiny import CACHE_MODES, CPU, DECODE, PROMPT, rewritten_graph, run_config, teacher_forced_errors, tiny_pair
from utils import UserError

FLAGS = {  # kind -> the flags that ask for it
    "fp8": dict(quant_format="fp8"),
    "fp8_wo": dict(quant_format="fp8", weight_only=True),
    "int8_wo": dict(quant_format="int8", weight_only=True),
    "int8": dict(quant_format="int8"),
    "int8_sq": dict(quant_format="int8", quant_algo="smoothquant"),
    "int4": dict(quant_format="int4"),
}


def kind_name(kind):
    return "int8" if kind == "int8_sq" else kind


def reference(x, tensors, bias, kind):
    """What the product must equal: activations fake-quantized per token (W8A8), then a plain
    FP32 matmul by the dequantized weight."""
    weight, scale, extra = tensors
    if kind_name(kind) in ("fp8", "int8"):
        if extra is not None:
            x = x * extra
        if x[..., 0].numel() > quantize.DECODE_ROWS:
            q, x_scale = quantize.quantize_rows(x, quantize.FP8 if kind == "fp8" else torch.int8)
            x = q.float() * x_scale
    return F.linear(x, quantize.dequantize(weight, scale, extra, kind_name(kind), torch.float32), bias)


@pytest.mark.parametrize("rows", [1, 5, 20])  # decode steps; 20: a prompt (_scaled_mm, _int_mm)
@pytest.mark.parametrize("kind", list(FLAGS))
def test_product_equals_dequantize_then_matmul(kind, rows):
    torch.manual_seed(0)
    weight, bias, x = torch.randn(48, 64), torch.randn(48), torch.randn(2, rows, 64)
    smooth = torch.rand(64) + 0.5 if kind == "int8_sq" else None
    tensors = quantize.quantize_weight(weight, kind_name(kind), 16, smooth)
    for row in x:  # [rows, 64]: batch 1 (one row is a decode step)
        got = quantize.quantized_linear(row[None], *tensors, bias, kind_name(kind))
        torch.testing.assert_close(got[0], reference(row, tensors, bias, kind), rtol=1e-5, atol=1e-5)
    got = quantize.quantized_linear(x, *tensors, None, kind_name(kind))  # [2, rows, 64]
    torch.testing.assert_close(got, reference(x, tensors, None, kind), rtol=1e-5, atol=1e-5)


# (groups wider than the fixed tile's 128 columns: a step takes whole groups)
@pytest.mark.parametrize("rows,n,k,group", [(1, 96, 512, 128), (1, 72, 1344, 64), (1, 40, 300, 0), (3, 40, 300, 0),
                                            (16, 130, 768, 64), (2, 72, 1344, 64), (1, 130, 1536, 0),
                                            (1, 40, 1024, 256), (2, 40, 1024, 256)])
@pytest.mark.parametrize("kind", ["int4", "int8_wo", "fp8_wo", "int8_sq"])
def test_decode_kernel_equals_dequantize_then_matmul(kind, rows, n, k, group, triton_device, monkeypatch):
    """``tllm::dequant_product`` (quant_gemv.py): its one-row kernel and its kernel for more rows,
    with masked edges and several splits."""
    if kind == "int4" and not group or kind != "int4" and group:
        pytest.skip("INT4 takes a group size, the others none")
    if kind.startswith("fp8") and triton_device.type == "cpu":
        pytest.skip("Triton's interpreter has no FP8: the GPU runs this case")
    import quant_gemv

    monkeypatch.setattr(quant_gemv, "num_sms", lambda index: 132)
    # One fixed tile: the interpreter cannot time autotuning's candidates, and on the GPU autotuning
    # each case would take minutes (test_gpu.py's quantized generation runs the autotuned tiles).
    partial_sums = quant_gemv.partial_sums
    monkeypatch.setattr(quant_gemv, "partial_sums", lambda *a: partial_sums(*a, tile=(32, 128)))
    dtype = torch.bfloat16 if triton_device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    weight = (torch.randn(n, k, device=triton_device) / k**0.5).to(dtype)  # outputs of about 1
    x = torch.randn(1, rows, k, device=triton_device, dtype=dtype)
    smooth = torch.rand(k, device=triton_device) + 0.5 if kind == "int8_sq" else None
    tensors = quantize.quantize_weight(weight, kind_name(kind), group, smooth)
    got = quant_gemv.quantized_linear(x, *tensors, None, kind_name(kind))
    want = reference(x.float(), [t if t is None or t.dtype != dtype else t.float() for t in tensors], None, kind)
    tol = 1e-4 if dtype == torch.float32 else 2e-2  # (sums of 768 products in another order)
    torch.testing.assert_close(got.float(), want, rtol=tol, atol=tol)


@pytest.mark.parametrize("kind", ["int8_wo", "fp8_wo"])
def test_weights_round_to_nearest(kind):
    torch.manual_seed(0)
    weight = torch.randn(32, 64) * torch.logspace(-2, 1, 64)  # channels of very different sizes
    tensors = quantize.quantize_weight(weight, kind, 0)
    error = (quantize.dequantize(*tensors, kind, torch.float32) - weight).abs()
    scale = tensors[1][:, None]
    if kind == "int8_wo":  # half a step of the row's scale
        assert (error <= scale / 2 * (1 + 1e-6)).all()
    else:  # 3 mantissa bits: half a unit in the last place, or of the smallest subnormal step
        assert (error <= torch.maximum(weight.abs() / 16, scale * 2.0**-10)).all()


def test_int4_is_round_to_nearest_min_max_per_group():
    """INT4 equals a plain PyTorch round-to-nearest of each group onto 16 levels from its
    minimum to its maximum, and packs eight values per int32 word, column 8r + t of a channel in
    bits 4t to 4t + 3 of its word r."""
    torch.manual_seed(0)
    weight = torch.randn(8, 96)
    packed, scale, low = quantize.quantize_weight(weight, "int4", 32)
    assert packed.dtype == torch.int32 and packed.shape == (12, 8) and scale.shape == low.shape == (3, 8)
    groups = weight.view(8, 3, 32)
    lo, hi = groups.amin(-1, keepdim=True), groups.amax(-1, keepdim=True)
    step = (hi - lo) / 15
    plain = (((groups - lo) / step).round() * step + lo).view(8, 96)
    torch.testing.assert_close(quantize.dequantize(packed, scale, low, "int4", torch.float32), plain)
    values = quantize.unpack_int4(packed)
    assert values.shape == (8, 96) and values.min() >= 0 and values.max() == 15
    assert (values[5, 8 * 2 + 7] == (packed[2, 5] >> 28) & 15) and (values[3, 8 * 11] == packed[11, 3] & 15)
    torch.testing.assert_close(quantize.dequantize(packed, scale, low, "int4", torch.float32),
                               (values.view(8, 3, 32) * scale.t()[..., None] + low.t()[..., None]).view(8, 96))


def quantized_reference(model, run, ids):
    """The model's copy with its Linears quantized in place (quantize_model): what the graph
    must compute."""
    ref = copy.deepcopy(model)
    quantize.quantize_model(ref, run, ids)
    return ref


def stepwise_logits(model, sequence):
    """The model's logits at the prompt's last position, then at each later token fed alone
    through its KV cache: each product sees the rows the graph's do (W8A8 quantizes the
    activations of a prompt's, not of a decode step's)."""
    with torch.no_grad():
        out = model(sequence[:, :PROMPT], use_cache=True)
        logits, cache = [out.logits[:, -1]], out.past_key_values
        for j in range(PROMPT, sequence.shape[1] - 1):
            out = model(sequence[:, j : j + 1], past_key_values=cache, use_cache=True)
            logits.append(out.logits[:, -1])
    return torch.stack(logits, 1)


def graph_logits(gen, sequence):
    with torch.no_grad():
        steps = [prefill(gen, sequence[:, :PROMPT])]
        steps += [gen.step(sequence[:, j : j + 1]) for j in range(PROMPT, sequence.shape[1] - 1)]
    for logits, token in steps:
        assert torch.equal(token, logits.argmax(-1))
    return torch.stack([logits for logits, _ in steps], 1)


def check_against_module(family, cache, kind, tol):
    ours, _ = tiny_pair(family)
    torch.manual_seed(1)
    sequence = torch.randint(0, ours.config.vocab_size, (1, PROMPT + DECODE))
    calibration = sequence[:, :PROMPT]
    run = run_config(ours, CPU, cache, batch_size=1, **FLAGS[kind])
    make = run_llm.text_inputs(1, ours.config.vocab_size, CPU)
    ref = quantized_reference(ours, run, calibration)  # (the build frees the weights it replaced)
    gen, _, _ = build_generator(LastLogits(ours), make, (1, 1), run, PROMPT + DECODE, (sequence[:, :PROMPT], None),
                                calibration=lambda: calibration)
    if cache:
        want = stepwise_logits(ref, sequence)
    else:  # without a cache every step reads the whole sequence, as a prompt
        with torch.no_grad():
            want = ref(sequence).logits[:, PROMPT - 1 : -1]
    errors = (graph_logits(gen, sequence) - want).abs().amax((0, 2))
    assert len(errors) == DECODE and errors.max() < tol, errors


@pytest.mark.parametrize("kind", list(FLAGS))
def test_graph_matches_the_quantized_model(kind):
    check_against_module("llama", "static_v2", kind, 1e-4)


@pytest.mark.parametrize("cache", CACHE_MODES)
@pytest.mark.parametrize("kind", ["int4", "fp8"])
def test_every_cache_mode(cache, kind):
    check_against_module("llama", cache, kind, 1e-4)


@pytest.mark.parametrize("family", ["gpt2", "qwen3", "gemma3"])  # Conv1D's addmm; q/k norm; sliding window
def test_families(family):
    check_against_module(family, "static_v2", "int8_wo", 1e-4)


def test_quantization_changes_the_logits():
    """The comparison above could pass with quantization doing nothing: it does not."""
    ours, ref = tiny_pair("llama")
    sequence = torch.randint(0, ours.config.vocab_size, (1, PROMPT + DECODE))
    run = run_config(ours, CPU, batch_size=1, **FLAGS["int4"])
    gen, _, _ = build_generator(LastLogits(ours), run_llm.text_inputs(1, ours.config.vocab_size, CPU), (1, 1), run,
                                PROMPT + DECODE, (sequence[:, :PROMPT], None))
    assert min(teacher_forced_errors(gen, ref, sequence)) > 1e-3


def test_lm_head_stays_16_bit_unless_asked():
    ours, _ = tiny_pair("llama")
    for lm_head, products in ((False, 4 * 2), (True, 4 * 2 + 1)):  # qkv, o, gate/up, down per layer
        run = dataclasses.replace(run_config(ours, CPU, **FLAGS["int8_wo"]), quant_lm_head=lm_head)
        gm = rewritten_graph_with(ours, run)
        assert sum(n.target is quantize.quantized_linear for n in gm.graph.nodes) == products
        assert len(gm.meta["quantized_from"]) == 2 * products  # weights and scales


def rewritten_graph_with(model, run, max_len=PROMPT + DECODE):
    import export_llm
    import passes

    gm = export_llm.export_graph(LastLogits(model), run_llm.text_inputs(1, model.config.vocab_size, CPU)(2),
                                 (1, 1), max_len)
    gm, _ = passes.run("export", gm, passes.Graph(run, max_len))
    gm, _ = passes.run("graph", gm, passes.Graph(run, max_len))
    return gm


def test_layer_split_ends_pieces_at_quantized_products():
    ours, _ = tiny_pair("llama", num_hidden_layers=4)
    plain = rewritten_graph(ours, "static_v2", PROMPT + DECODE)
    quantized = rewritten_graph_with(ours, run_config(ours, CPU, **FLAGS["int4"]))
    for gm in (plain, quantized):
        pieces = layer_split.pieces(layer_split.split_by_layer(gm))
        assert len(pieces) == 5 and len({layer_split.signature(m) for _, m in pieces}) == 3


def test_build_cache_quantizes_again_instead_of_storing(monkeypatch):
    ours, ref = tiny_pair("llama")
    sequence = torch.randint(0, ours.config.vocab_size, (1, PROMPT + DECODE))
    run = run_config(ours, CPU, **FLAGS["int8_sq"])
    make = run_llm.text_inputs(1, ours.config.vocab_size, CPU)
    calls = []
    requantize = quantize.requantize
    monkeypatch.setattr(quantize, "requantize", lambda *a: calls.append(a) or requantize(*a))

    def built():  # each from its own copy of the weights, as each process loads them (a build frees some)
        gen, _, cached = build_generator(LastLogits(copy.deepcopy(ours)), make, (1, 1), run, PROMPT + DECODE,
                                         (sequence[:, :PROMPT], None), {"test": "quantized"},
                                         calibration=lambda: sequence[:, :PROMPT])
        return cached, teacher_forced_errors(gen, ref, sequence)

    first, errors = built()
    assert first["status"] == "built" and not calls
    second, loaded_errors = built()
    assert second["status"] == "loaded" and len(calls) == 2 * 4 + 0  # one per distinct weight: 2 layers x 4
    assert errors == loaded_errors  # the same logits, to the bit
    entry = build_cache.root() / second["key"]
    weights = sum(p.numel() for p in ours.parameters())
    assert (entry / "graphs.pkl").stat().st_size < weights  # no copy of the (1-byte) quantized weights


def is_placeholder(tensor):
    return tensor.untyped_storage().nbytes() == tensor.element_size()


@pytest.mark.parametrize("tied", [False, True])
def test_a_build_frees_the_weights_quantized_copies_replaced(tied):
    """Each quantized Linear's 16-bit weight becomes a placeholder of no memory (its shape kept
    for the bandwidth figures), built and loaded from the build cache alike, and the graph still
    computes the quantized model; the embedding and norms stay, and so does an LM head tied to
    the embedding even when it is quantized. With PyTorch baselines (they run the Hugging Face
    model) nothing is freed."""
    ours, _ = tiny_pair("llama", tie_word_embeddings=tied)
    sequence = torch.randint(0, ours.config.vocab_size, (1, PROMPT + DECODE))
    make = run_llm.text_inputs(1, ours.config.vocab_size, CPU)
    for baselines, status in ((False, "built"), (False, "loaded"), (True, None)):
        run = dataclasses.replace(run_config(ours, CPU, **FLAGS["int8_wo"]), quant_lm_head=tied,
                                  enable_pytorch_run=baselines)
        model = copy.deepcopy(ours)
        gen, _, cached = build_generator(LastLogits(model), make, (1, 1), run, PROMPT + DECODE,
                                         (sequence[:, :PROMPT], None), status and {"test": f"release {tied}"})
        assert status is None or cached["status"] == status
        head = model.get_output_embeddings()
        quantized = {id(m.weight) for _, m in quantize._linears(model, head, tied)}
        for name, p in model.named_parameters(remove_duplicate=False):
            freed = id(p) in quantized and not baselines and not (tied and p is head.weight)
            assert is_placeholder(p) == freed, name
            assert p.shape == ours.get_parameter(name).shape
        errors = teacher_forced_errors(gen, quantized_reference(ours, run, None), sequence)
        assert max(errors) < 1e-4, errors


@pytest.mark.parametrize("fields,message", [
    (dict(quant_format="nvfp4"), "nvfp4 runs only on Blackwell GPUs through TensorRT"),
    (dict(quant_format="fp8", quant_algo="smoothquant"), "smoothquant balances activations for INT8 W8A8"),
    (dict(quant_format="int8", quant_algo="smoothquant", weight_only=True), "without --weight_only"),
    (dict(weight_only=True), "they need --quant_format"),
    (dict(quant_format="fp8", quant_group_size=64), "--quant_group_size groups INT4 weights"),
])
def test_bad_flags_are_refused(fields, message):
    ours, _ = tiny_pair("llama")
    with pytest.raises(UserError, match=message):
        run_config(ours, CPU, **fields)


def test_a_group_size_that_does_not_divide_is_refused():
    ours, _ = tiny_pair("llama")  # widths 64 and 128
    with pytest.raises(UserError, match="--quant_group_size 48 does not divide the input width 64"):
        rewritten_graph_with(ours, run_config(ours, CPU, quant_format="int4", quant_group_size=48))
    assert quantize.group_size({576, 1536}, 0) == 64  # SmolLM2: 128 does not divide 576
    with pytest.raises(UserError, match="give --quant_group_size"):
        quantize.group_size({104}, 0)
    with pytest.raises(UserError, match="eight input channels a word: this model has a layer 100 wide"):
        quantize.group_size({100, 128}, 4)


def test_eval_ppl_measures_the_quantized_model(tiny_chat_dir, tmp_path, capsys):
    out = {}
    for name, flags in (("16-bit", []), ("int4", ["--quant_format", "int4", "--quant_group_size", "32"])):
        path = tmp_path / f"{name}.json"
        eval_ppl.main(["--model", str(tiny_chat_dir), "--max_tokens", "64", "--output_json", str(path), *flags])
        out[name] = __import__("json").loads(path.read_text())
    assert out["16-bit"]["quantization"] is None
    assert out["int4"]["quantization"]["format"] == "int4"
    assert out["int4"]["perplexity"] != out["16-bit"]["perplexity"]
    assert "int4 g32 weights" in capsys.readouterr().out


def test_the_record_names_the_group_size_chosen(tiny_llama_dir, tmp_path, capsys):
    """Without --quant_group_size the widths choose it (the tiny Llama's 64 takes 64): the JSON
    record and the table say which."""
    path = tmp_path / "int4.json"
    run_llm.main(["--model", str(tiny_llama_dir), "--device", "cpu", "--benchmark", "--isl", "8", "--num_tokens", "2",
                  "--iterations", "1", "--quant_format", "int4", "--output_json", str(path)])
    assert __import__("json").loads(path.read_text())["quantization"]["group_size"] == 64
    assert "FP32 int4 g64" in capsys.readouterr().out


@pytest.mark.parametrize("flags,message", [
    (("int4", False, "max", False), "--quant_format int4 does not run on --backend tensorrt"),
    (("fp8", True, "max", False), "--quant_format fp8 --weight_only does not run on --backend tensorrt"),
    (("fp8", False, "max", True), "ModelOpt's presets keep the LM head 16-bit"),
])
def test_tensorrt_takes_what_modelopt_and_torch_tensorrt_convert(flags, message):
    import tensorrt_backend

    assert tensorrt_backend.modelopt_preset("int8", False, "smoothquant", False) == "INT8_SMOOTHQUANT_CFG"
    with pytest.raises(UserError, match=message):
        tensorrt_backend.modelopt_preset(*flags)


def test_tensorrt_quantization_without_modelopt_is_one_line(monkeypatch):
    import tensorrt_backend

    monkeypatch.setitem(sys.modules, "modelopt.torch.quantization", None)  # (an import of it fails)
    ours, _ = tiny_pair("llama")
    run = dataclasses.replace(run_config(ours, CPU), backend="tensorrt", quant_format="fp8")
    with pytest.raises(UserError, match="quantizes with NVIDIA ModelOpt: pip install -r requirements-tensorrt.txt"):
        tensorrt_backend.quantize_with_modelopt(LastLogits(ours), run, torch.zeros(1, 4, dtype=torch.long))


def test_modelopt_quantizes_and_export_keeps_its_quantize_ops():
    """The TensorRT path up to torch_tensorrt (which is not installable here): ModelOpt's FP8
    preset, calibrated, then export under its export mode leaves one tensorrt::quantize_op per
    quantized input and weight, the ops torch_tensorrt 2.13 converts."""
    pytest.importorskip("modelopt", reason="nvidia-modelopt (requirements-dev.txt) makes the quantizers")
    import export_llm
    import tensorrt_backend

    ours, _ = tiny_pair("llama")
    run = dataclasses.replace(run_config(ours, CPU), backend="tensorrt", quant_format="fp8")
    module = LastLogits(ours)
    with tensorrt_backend.quantize_with_modelopt(module, run, torch.randint(0, 512, (1, 16))):
        gm = export_llm.export_graph(module, run_llm.text_inputs(1, 512, CPU)(2), (1, 1), 64)
    ops = [n for n in gm.graph.nodes if "quantize_op" in str(n.target)]
    assert len(ops) == 2 * 7 * 2  # input and weight of 7 Linears in each of 2 layers; the LM head stays 16-bit
