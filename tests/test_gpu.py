"""On a CUDA GPU: every text family, every cache mode, eager and Inductor, with and without
CUDA graphs, in BF16 and FP16, against transformers' eager FP32 model (teacher-forced).

Tolerance: a low-precision pipeline cannot match FP32 exactly, so each step's relative logit
error ||ours - fp32|| / ||fp32|| must stay within twice (plus 1e-3) what transformers' own
eager model in the same precision shows against FP32 on the same input: no worse than the
library's own reduced-precision path. Greedy top-1 must agree wherever FP32's top-2 gap > 0.1.
Skipped without a GPU (CI has none); results are recorded in BENCHMARKS.md."""

import pytest
import torch

from test_llm_pipeline import DECODE, PROMPT, build, tiny_pair
from tiny import FAMILIES

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")

CONFIGS = [("eager", cache, False) for cache in ("static_v2", "static_v1", "dynamic", "")] + [
    ("inductor", "static_v2", False),
    ("inductor", "static_v2", True),
    ("eager", "static_v2", True),
]


def relative_errors(gen, sequence, want):
    with torch.no_grad():
        from generate import prefill

        got = [prefill(gen, sequence[:, :PROMPT])]
        got += [gen.step(sequence[:, j : j + 1]) for j in range(PROMPT, sequence.shape[1])]
    got = torch.stack(got, 1)
    return ((got - want).norm(dim=-1) / want.norm(dim=-1)).flatten(), got


@pytest.mark.parametrize("precision", [torch.bfloat16, torch.float16], ids=["BF16", "FP16"])
@pytest.mark.parametrize("backend,cache,cudagraph", CONFIGS, ids=lambda v: str(v) if v != "" else "none")
@pytest.mark.parametrize("family", list(FAMILIES))
def test_low_precision_matches_fp32(family, backend, cache, cudagraph, precision):
    if precision == torch.float16 and family == "gemma3":
        pytest.skip("Gemma 3 overflows in FP16 (documented; BF16 is its precision)")
    if backend == "inductor" and precision == torch.float16 and family not in ("llama", "qwen2"):
        pytest.skip("Inductor FP16 covered on two families to keep the GPU run short")
    ours, ref = tiny_pair(family, precision, CUDA)
    torch.manual_seed(1)
    sequence = torch.randint(0, ours.config.vocab_size, (1, PROMPT + DECODE), device=CUDA)
    with torch.no_grad():
        want = ref(sequence).logits[:, PROMPT - 1 :].float()
        same_precision = ref.to(precision)(sequence).logits[:, PROMPT - 1 :].float()
    hf_error = ((same_precision - want).norm(dim=-1) / want.norm(dim=-1)).max().item()
    errors, got = relative_errors(build(ours, sequence[:, :PROMPT], cache, backend, cudagraph=cudagraph), sequence, want)
    print(f"{family} {backend} {cache or 'none'} cudagraph={cudagraph} {precision}: "
          f"max rel err {errors.max().item():.2e} (transformers same precision {hf_error:.2e})")
    assert errors.max().item() <= 2 * hf_error + 1e-3
    top2 = want.topk(2, dim=-1).values
    clear = (top2[..., 0] - top2[..., 1]) > 0.1
    assert (got.argmax(-1) == want.argmax(-1))[clear].all()
