"""What each quantized format costs in accuracy, on one model: perplexity on Hamlet (eval_ppl.py),
top-1 agreement with the 16-bit model over the same text (teacher-forced), and greedy answers to
a few questions compared token by token with the 16-bit answers. Every format quantizes the
same 16-bit weights with the layers the ``quantize`` pass uses (``quantize.quantize_model``).
For INT4 it also scores a plain PyTorch reference: each group of weights rounded to nearest on
16 symmetric levels (zero at 8, scale from the group's largest magnitude), written here
independently of quantize.py. Runs on CPU (the bundled SmolLM2 in about 5 minutes on two
cores) or a GPU.

    python3 benchmarks/quant_accuracy.py [--model ID|FOLDER] [--max_tokens 4096] [--json PATH]
"""

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import config as run_config  # noqa: E402
import eval_ppl  # noqa: E402
import models  # noqa: E402
import quantize  # noqa: E402
from files import write_json  # noqa: E402
from utils import resolve_device, versions  # noqa: E402

FORMATS = {  # name -> RunConfig quantization fields
    "16-bit": {},
    "int8 weight-only": dict(quant_format="int8", weight_only=True),
    "int8 W8A8": dict(quant_format="int8"),
    "int8 SmoothQuant": dict(quant_format="int8", quant_algo="smoothquant"),
    "fp8 weight-only": dict(quant_format="fp8", weight_only=True),
    "fp8 W8A8": dict(quant_format="fp8"),
    "int4": dict(quant_format="int4"),
    "int4, plain symmetric reference": None,
}
QUESTIONS = (
    "What is the capital of France?",
    "Name three primary colors.",
    "How many legs does a spider have?",
    "Write one sentence about the sea.",
    "What is 12 times 12?",
    "Who wrote Romeo and Juliet?",
    "Give a synonym for happy.",
    "What do bees make?",
)
ANSWER_TOKENS = 32


def plain_int4(model, group):
    """Round each group of ``group`` input channels of every Linear but the LM head to 16
    symmetric levels, in place (the reference INT4 must be no better than)."""
    head = model.get_output_embeddings()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and module is not head:
                w = module.weight.float().view(module.out_features, -1, group)
                scale = (w.abs().amax(-1, keepdim=True) / 7).clamp(min=1e-8)
                module.weight.copy_(((w / scale).round().clamp(-8, 7) * scale).view_as(module.weight))


@torch.no_grad()
def answers(model, tokenizer, device):
    """Greedy answers (token ids) to QUESTIONS, under the chat template."""
    out = []
    for question in QUESTIONS:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"].to(device)
        new = model.generate(ids, max_new_tokens=ANSWER_TOKENS, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        out.append(new[0, ids.shape[1]:].tolist())
    return out


def agreement(answer, reference):
    """Tokens equal to the 16-bit answer's before the first difference, as a fraction."""
    same = 0
    for a, b in zip(answer, reference):
        if a != b:
            break
        same += 1
    return same / max(len(reference), 1)


@torch.no_grad()
def top1(model, ids, window):
    """The model's top-1 prediction at each position of ``ids`` (windows of ``window``)."""
    picks = []
    for start in range(0, len(ids), window):
        chunk = ids[start:start + window][None]
        picks.append(model(input_ids=chunk, use_cache=False).logits[0].argmax(-1))
    return torch.cat(picks)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="Hugging Face id or folder (default: the bundled SmolLM2-135M-Instruct)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", choices=("FP32", "FP16", "BF16"))
    parser.add_argument("--max_tokens", type=int, default=4096)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    model_config = models.load_config(args.model, False)
    run = run_config.resolve(model_config.model_type, device=str(device), precision=args.precision, backend="eager",
                             decode_attention="sdpa", model=args.model)
    tokenizer = models.prompt_tokenizer(args.model, False, None, model_config)
    base, _, _ = models.load_model(args.model, False, run.dtype, device, with_tokenizer=False, config=model_config)
    ids = torch.tensor(tokenizer(eval_ppl.load_text()).input_ids[:args.max_tokens], device=device)
    calibration = quantize.calibration_ids(tokenizer, model_config.vocab_size, device)
    window = min(eval_ppl.DEFAULT_WINDOW, models.positions(model_config))
    rows, reference_answers, reference_top1 = [], None, None
    print(f"{'format':32} {'perplexity':>10} {'vs 16-bit':>9} {'top-1 agree':>11} {'answers same':>12} "
          f"{'prefix kept':>11} {'s':>5}", flush=True)
    for name, fields in FORMATS.items():
        start = time.perf_counter()
        model = copy.deepcopy(base)
        note = ""
        if fields is None:
            group = quantize.group_size({m.in_features for m in model.modules() if isinstance(m, torch.nn.Linear)}, 0)
            plain_int4(model, group)
            note = f"group {group}"
        elif fields:
            config = run_config.resolve(model_config.model_type, device=str(device), precision=run.precision,
                                        backend="eager", decode_attention="sdpa", model=args.model, **fields)
            note = quantize.quantize_model(model, config, calibration)
        ppl = eval_ppl.perplexity(model, ids, window, window // 2, progress=False)["perplexity"]
        picks, got = top1(model, ids, window), answers(model, tokenizer, device)
        if reference_answers is None:
            reference_answers, reference_top1, base_ppl = got, picks, ppl
        row = dict(format=name, note=note, perplexity=ppl, vs_16bit_pct=100 * (ppl / base_ppl - 1),
                   top1_agreement=(picks == reference_top1).float().mean().item(),
                   answers_identical=sum(a == b for a, b in zip(got, reference_answers)),
                   prefix_kept=sum(map(agreement, got, reference_answers)) / len(QUESTIONS),
                   seconds=time.perf_counter() - start)
        rows.append(row)
        print(f"{name:32} {ppl:10.3f} {row['vs_16bit_pct']:+8.2f}% {row['top1_agreement']:11.3f} "
              f"{row['answers_identical']:>8}/{len(QUESTIONS)} {row['prefix_kept']:11.3f} {row['seconds']:5.0f}",
              flush=True)
    if args.json:
        write_json(args.json, {"model": run.model_name, "precision": run.precision, "device": str(device),
                               "text": eval_ppl.TEXT_NAME, "tokens": len(ids), "window": window,
                               "answer_tokens": ANSWER_TOKENS, "questions": list(QUESTIONS), "rows": rows,
                               "versions": versions()})


if __name__ == "__main__":
    main()
