"""On a CUDA GPU: every text family, every cache mode, eager and Inductor, with and without
CUDA graphs, in BF16 and FP16, against transformers' eager FP32 model (teacher-forced); the
split-K decode kernel against FP32 attention at the real models' head shapes and cache lengths;
and both vision-language models in BF16 (vision encoder, prefill, decode) against FP32.

Tolerance: a low-precision pipeline cannot match FP32 exactly, so each step's relative logit
error ||ours - fp32|| / ||fp32|| must stay within twice (plus 1e-3) what transformers' own
eager model in the same precision shows against FP32 on the same input: no worse than the
library's own reduced-precision path. Greedy top-1 must agree wherever FP32's top-2 gap > 0.1.
Skipped without a GPU (CI has none); results are recorded in BENCHMARKS.md."""

import copy

import pytest
import torch

import register_sdpa
from generate import generate, prefill
from sampling import Sampling
from tiny import CACHE_MODES, DECODE, FAMILIES, PROMPT, build, four_layers, tiny_pair
from tiny_vlm import (
    eagle_family,
    qwen_family,
    run_pipeline,
    sample_image,
    tiny_eagle_model,
    tiny_qwen_model,
    vlm_config,
)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")

CONFIGS = [(backend, cache, False) for backend in ("eager", "inductor") for cache in CACHE_MODES] + [
    ("inductor", "static_v2", True),
    ("eager", "static_v2", True),
]


def pipeline_logits(gen, sequence):
    """Prefill of the prompt, then one teacher-forced step per later token: [1, steps, V]."""
    with torch.no_grad():
        got = [prefill(gen, sequence[:, :PROMPT])[0]]
        got += [gen.step(sequence[:, j : j + 1])[0] for j in range(PROMPT, sequence.shape[1])]
    return torch.stack(got, 1)


@pytest.mark.parametrize("precision", [torch.bfloat16, torch.float16], ids=["BF16", "FP16"])
@pytest.mark.parametrize("backend,cache,cudagraph", CONFIGS, ids=lambda v: str(v) if v != "" else "none")
@pytest.mark.parametrize("family", list(FAMILIES))
def test_low_precision_matches_fp32(family, backend, cache, cudagraph, precision):
    if precision == torch.float16 and family == "gemma3":
        pytest.skip("Gemma 3 overflows in FP16 (documented; BF16 is its precision)")
    fp16_inductor_case = family in ("llama", "qwen2") and cache == "static_v2"
    if backend == "inductor" and precision == torch.float16 and not fp16_inductor_case:
        pytest.skip("Inductor FP16 covered on two families with static_v2 to keep the GPU run short")
    check_pipeline_against_fp32(family, precision, f"{family} {backend} {cache or 'none'} cudagraph={cudagraph} "
                                f"{precision}", cache=cache, backend=backend, cudagraph=cudagraph)


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_replayed_greedy_steps_feed_themselves(family):
    """Greedy decoding with CUDA graphs, where each replayed step writes the next step's inputs
    itself, gives the tokens of the same pipeline without CUDA graphs (same kernels, so the
    same numbers), at batch 2, for a fixed length and with an EOS that ends one row early."""
    ours, _ = tiny_pair(family, torch.bfloat16, CUDA)
    torch.manual_seed(2)
    prompt = torch.randint(0, ours.config.vocab_size, (2, PROMPT), device=CUDA)
    gens = [build(ours, prompt, "static_v2", cudagraph=cudagraph) for cudagraph in (False, True)]

    def decode(gen, eos_ids=()):
        return generate(gen, prompt.tolist(), DECODE, eos_ids)

    plain, replayed = (decode(gen) for gen in gens)
    assert plain == replayed
    # A one-token prompt: its capture (into an empty cache) must not be replayed as a decode step.
    assert generate(gens[1], prompt[:, :1].tolist(), DECODE) == generate(gens[0], prompt[:, :1].tolist(), DECODE)
    eos = [plain[0][DECODE // 2]]
    plain, replayed = (decode(gen, eos) for gen in gens)
    assert plain == replayed and len(plain[0]) <= DECODE // 2 + 1


@pytest.mark.parametrize("family", list(FAMILIES))
def test_sdpa_decode_matches_fp32(family):
    """The other decode kernel (``--decode_attention sdpa``), compiled and replayed as a CUDA graph."""
    check_pipeline_against_fp32(family, torch.bfloat16, f"{family} sdpa decode", cache="static_v2",
                                backend="inductor", cudagraph=True, decode_attention="sdpa")


def check_pipeline_against_fp32(family, precision, label, **build_args):
    """A tiny model of the family built as ``build(**build_args)`` in ``precision``, teacher-forced,
    against transformers' FP32 model (the bound of ``check_against_fp32``). Four layers or more,
    so that Inductor with CUDA graphs runs one compiled piece for several layers."""
    ours, ref = tiny_pair(family, precision, CUDA, **four_layers(family))
    torch.manual_seed(1)
    sequence = torch.randint(0, ours.config.vocab_size, (1, PROMPT + DECODE), device=CUDA)
    with torch.no_grad():
        want = ref(sequence).logits[:, PROMPT - 1 :].float()
        same_precision = ref.to(precision)(sequence).logits[:, PROMPT - 1 :].float()
    got = pipeline_logits(build(ours, sequence[:, :PROMPT], **build_args), sequence)
    check_against_fp32(got, want, same_precision, label)


@pytest.mark.parametrize("op", ["decode_attention", "decode_attention_pdl"])
@pytest.mark.parametrize("precision", [torch.bfloat16, torch.float16], ids=["BF16", "FP16"])
@pytest.mark.parametrize(
    "batch,q_heads,kv_heads,head_dim,max_len,position,window",
    [
        (1, 14, 2, 64, 256, 130, 0),  # Qwen2.5-0.5B at ISL 128: one split, 7 query heads per K/V head
        (1, 32, 8, 64, 2176, 2100, 0),  # Llama-3.2-1B at ISL 2048: several splits, merged
        (2, 4, 1, 256, 2176, 1500, 512),  # Gemma 3 sliding layer, batch 2: splits outside the window
        (1, 12, 12, 64, 1024, 3, 0),  # GPT-2 early on: most splits see no visible key
        (1, 8, 8, 80, 600, 599, 0),  # a head size that is not a power of two
    ],
)
def test_decode_kernel_matches_fp32(batch, q_heads, kv_heads, head_dim, max_len, position, window, precision, op):
    """``tllm::decode_attention`` (and its twin launched with PDL) against FP32 attention: within
    2x (+1e-3) of PyTorch's SDPA in the same precision, the kernel it replaces."""
    torch.manual_seed(0)
    q = torch.randn(batch, q_heads, 1, head_dim, device=CUDA)
    k, v = (torch.randn(batch, kv_heads, max_len, head_dim, device=CUDA) for _ in range(2))
    cache_position = torch.tensor([position], device=CUDA)
    mask = register_sdpa.visible_keys(cache_position, max_len, window)
    scale = head_dim**-0.5
    low = [t.to(precision) for t in (q, k, v)]
    import decode_attention  # needs triton, which comes with CUDA builds of torch

    got = getattr(decode_attention, op)(*low, cache_position, scale, window).float()
    want = register_sdpa._masked_gqa_sdpa(q, k, v, mask, scale).transpose(1, 2)  # the kernel returns [B, 1, Hq, D]
    sdpa = register_sdpa._masked_gqa_sdpa(*low, mask, scale).float().transpose(1, 2)
    flat = [t.reshape(-1, head_dim) for t in (got, want, sdpa)]
    error, sdpa_error = max_relative_error(flat[0], flat[1]), max_relative_error(flat[2], flat[1])
    print(f"decode kernel {tuple(q.shape)} over {max_len} keys: max rel err {error:.2e} (SDPA {sdpa_error:.2e})")
    assert error <= 2 * sdpa_error + 1e-3


def max_relative_error(got, want):
    return ((got - want).norm(dim=-1) / want.norm(dim=-1)).max().item()


def check_against_fp32(got, want, same_precision, label):
    """The low-precision bound above: within 2x (+1e-3) of the reference model's own error in
    that precision, and the same top-1 wherever FP32's top-2 gap is clear."""
    error, hf_error = max_relative_error(got, want), max_relative_error(same_precision, want)
    print(f"{label}: max rel err {error:.2e} (reference model in that precision {hf_error:.2e})")
    assert error <= 2 * hf_error + 1e-3
    top2 = want.topk(2, dim=-1).values
    clear = (top2[..., 0] - top2[..., 1]) > 0.1
    assert (got.argmax(-1) == want.argmax(-1))[clear].all()


VLM_CONFIGS = [("eager", False), ("inductor", True)]


@pytest.mark.parametrize("backend,cudagraph", VLM_CONFIGS, ids=["eager", "inductor-cudagraph"])
@pytest.mark.parametrize("vision", ["eager", "compile"])
def test_qwen_vl_bf16_matches_fp32(backend, cudagraph, vision):
    """Tiny Qwen2.5-VL, BF16 pipeline (M-RoPE, 24 tokens) vs Hugging Face's eager model in FP32 on
    the same sequence, image included."""
    fp32 = tiny_qwen_model().to(CUDA)
    bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
    vlm = qwen_family(copy.deepcopy(bf16))
    vlm.set_image(sample_image(), compiled=vision == "compile")
    run = vlm_config("cuda", backend, "BF16", vision=vision, cudagraph=cudagraph)
    input_ids, logits, tokens = run_pipeline(vlm, run)
    sequence = torch.cat([input_ids, tokens[:, :-1]], 1)

    def reference(model):
        with torch.no_grad():
            out = model(input_ids=sequence, pixel_values=vlm.pixel_values.to(CUDA, model.dtype),
                        image_grid_thw=vlm.grid_thw.to(CUDA),
                        mm_token_type_ids=(sequence == vlm.image_token_id).int())
        return out.logits[:, input_ids.shape[1] - 1:].float()

    check_against_fp32(torch.stack(logits, 1), reference(fp32), reference(bf16),
                       f"qwen2.5-vl {backend} vision={vision} cudagraph={cudagraph}")


@pytest.mark.parametrize("backend,cudagraph", VLM_CONFIGS, ids=["eager", "inductor-cudagraph"])
def test_eagle2_bf16_matches_fp32(backend, cudagraph):
    """Tiny Eagle2, BF16 pipeline (compiled tile encoder, 13 tiles) vs the project's eager model
    in FP32 on the same sequence."""
    fp32 = tiny_eagle_model().to(CUDA)
    bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
    vlm = eagle_family(copy.deepcopy(bf16))
    vlm.set_image(sample_image())
    input_ids, logits, tokens = run_pipeline(vlm, vlm_config("cuda", backend, "BF16", cudagraph=cudagraph))
    sequence = torch.cat([input_ids, tokens[:, :-1]], 1)
    pixels = vlm.vision_inputs(1, CUDA)

    def reference(model):
        with torch.no_grad():
            return model(sequence, pixels, vlm.image_token_id)[:, input_ids.shape[1] - 1:].float()

    check_against_fp32(torch.stack(logits, 1), reference(fp32), reference(bf16),
                       f"eagle2 {backend} cudagraph={cudagraph}")


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_padded_batch_with_cuda_graphs_matches_fp32(family):
    """A left-padded batch of three prompts (5, 24 and 13 tokens; Gemma's window is 16) on
    Inductor + CUDA graphs in BF16, split-K decode kernel included: each row's teacher-forced
    logits stay within BF16 error of FP32 transformers on that prompt alone, and top-1 agrees
    wherever FP32's top-2 gap > 0.1."""
    ours, ref = tiny_pair(family, torch.bfloat16, CUDA)
    ref = ref.float()
    torch.manual_seed(3)
    prompts = [torch.randint(0, ours.config.vocab_size, (n,)).tolist() for n in (5, 24, 13)]
    follow = torch.randint(0, ours.config.vocab_size, (3, 16), device=CUDA)
    longest = max(map(len, prompts))
    pads = [longest - len(p) for p in prompts]
    padded = torch.tensor([[0] * pad + p for p, pad in zip(prompts, pads)], device=CUDA)
    gen = build(ours, padded, "static_v2", backend="inductor", cudagraph=True, max_len=64)
    with torch.no_grad():
        gen.reset()
        gen.set_rows(key_start=pads)
        got = [prefill(gen, padded)[0]] + [gen.step(follow[:, j : j + 1])[0] for j in range(follow.shape[1])]
        got = torch.stack(got, 1).float()
        for row, prompt in enumerate(prompts):
            full = torch.tensor([prompt + follow[row].tolist()], device=CUDA)
            want = ref(full).logits[0, len(prompt) - 1 :].float()
            error = (got[row] - want).norm(dim=-1) / want.norm(dim=-1)
            assert error.max() < 0.03, (row, error)
            top2 = want.topk(2, -1).values
            clear = (top2[:, 0] - top2[:, 1]) > 0.1
            assert torch.equal(got[row].argmax(-1)[clear], want.argmax(-1)[clear]), row


def test_sampling_in_replayed_steps_equals_plain_steps():
    """Sampling in the graph (top-k, top-p, per-row seeds) with CUDA graphs, whose replayed steps
    feed themselves, gives the tokens of the same build run step by step without them."""
    ours, _ = tiny_pair("llama", torch.bfloat16, CUDA)
    torch.manual_seed(4)
    prompts = [torch.randint(0, ours.config.vocab_size, (n,)).tolist() for n in (7, 20)]
    settings = [Sampling(0.8, top_k=20, top_p=0.9, seed=1), Sampling(1.2, seed=2)]
    warm = torch.zeros((2, 20), dtype=torch.long, device=CUDA)
    gens = [build(ours, warm, "static_v2", backend="inductor", cudagraph=cudagraph, max_len=64, temperature=1.0,
                  seed=0) for cudagraph in (False, True)]
    plain, replayed = (generate(gen, prompts, 40, sampling=settings) for gen in gens)
    assert plain == replayed
    assert plain != generate(gens[0], prompts, 40)


@pytest.mark.parametrize("flags", [dict(quant_format="fp8"), dict(quant_format="fp8", weight_only=True),
                                   dict(quant_format="int8", weight_only=True), dict(quant_format="int8"),
                                   dict(quant_format="int8", quant_algo="smoothquant"), dict(quant_format="int4")],
                         ids=["fp8", "fp8_wo", "int8_wo", "int8", "int8_sq", "int4"])
def test_quantized_graph_matches_its_fp32_reference(flags):
    """Each quantized format in BF16 on Inductor with CUDA graphs (the GPU's paths: one-row
    reductions over packed weights, _scaled_mm, _int_mm) against the same model quantized the
    same way in FP32 (quantize_model), within the bound of the other tests: twice (+1e-3) what
    the quantized Hugging Face model in BF16 shows against it."""
    from test_quantize import stepwise_logits

    import quantize
    from export_llm import LastLogits
    from pipeline import build_generator
    from run_llm import text_inputs
    from tiny import run_config

    ours, _ = tiny_pair("llama", torch.bfloat16, CUDA, num_hidden_layers=4)
    torch.manual_seed(1)
    sequence = torch.randint(0, ours.config.vocab_size, (1, PROMPT + DECODE), device=CUDA)
    calibration = sequence[:, :PROMPT]
    run = run_config(ours, CUDA, "static_v2", "inductor", cudagraph=True, batch_size=1, **flags)
    references = []
    for dtype in (torch.float32, torch.bfloat16):  # fed as the graph is: W8A8 decode steps keep 16-bit activations
        ref = copy.deepcopy(ours).to(dtype)
        quantize.quantize_model(ref, run, calibration)
        references.append(stepwise_logits(ref, sequence).float())
    gen, _, _ = build_generator(LastLogits(ours), text_inputs(1, ours.config.vocab_size, CUDA), (1, 1), run,
                                PROMPT + DECODE, (sequence[:, :PROMPT], None), calibration=lambda: calibration)
    check_against_fp32(pipeline_logits(gen, sequence)[:, :-1], *references, f"llama inductor cudagraph {flags}")
