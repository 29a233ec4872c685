"""The command line both tools share: their common flags, turning them into a RunConfig, and
the top-level error handling that turns bad input into one line and a non-zero exit."""

import argparse
import functools
import json
import sys
from pathlib import Path

import torch

import backends
import benchmark
import cache_modes
import config
import prequantized
import quantize
import tensor_parallel
from files import write_json, write_problem
from utils import PRECISIONS, UserError, leader, log


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):  # one line, not a usage block (from rank 0 alone, under torchrun)
        self.exit(2, f"error: {message} (see --help)\n" if leader() else None)


def number(kind, ok, rule):
    """An argparse type: ``kind`` (int or float) of the text, refused in one line unless ``ok``
    (``rule`` says what holds)."""

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {value}")
        return value

    return parse


positive_int = number(int, lambda v: v >= 1, ">= 1")
non_negative_int = number(int, lambda v: v >= 0, ">= 0")
_probability = number(float, lambda v: 0 < v <= 1, "in (0, 1]")
_non_negative_float = number(float, lambda v: v >= 0, ">= 0")  # (NaN is refused too)


def add_model_args(parser):
    """What to load: the model, its tokenizer, the precision and device."""
    parser.add_argument("--model", help="Hugging Face id or local folder (default: the bundled SmolLM2-135M-Instruct)")
    parser.add_argument("--tokenizer", help="tokenizer id or folder, if not the model's own")
    parser.add_argument("--random_weights", action="store_true",
                        help="random weights at the real shape, from the config bundled for --model (no download)")
    parser.add_argument("--no_chat_template", action="store_true",
                        help="feed the prompt as is, without the chat template")
    parser.add_argument("--precision", default=None, choices=PRECISIONS,
                        help="compute dtype (default: FP16 on GPU, BF16 for Gemma 3; FP32 on CPU)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or cuda:N (default: cuda if present)")
    return parser


def add_build_args(parser):
    """How to build it: cache mode, backend, CUDA graphs, kernels, batch and cache size."""
    parser.add_argument("--cache", default="static_v2", choices=cache_modes.MODES,
                        help="KV cache: static_v2 (fast, default), static_v1 (functional), dynamic (grows), '' (none)")
    parser.add_argument("--max_len", type=positive_int,
                        help="positions the KV cache holds (default: what the prompt and --num_tokens need, rounded up "
                             "to 256; --interactive and serve.py: 4096 or the model's positions if fewer)")
    parser.add_argument("--prefill_chunk", type=non_negative_int, default=0,
                        help="feed the prompt in chunks of this many tokens (static_v2 only)")
    parser.add_argument("--backend", default="auto", choices=backends.BACKENDS)
    parser.add_argument("--cudagraph", action="store_true", help="replay each decode step as a CUDA graph (static_v2)")
    parser.add_argument("--decode_attention", default="triton", choices=config.DECODE_KERNELS,
                        help="static_v2 decode attention on CUDA: triton (split-K flash decoding, default) or sdpa "
                             "(PyTorch's masked SDPA); CPU always uses SDPA")
    parser.add_argument("--min_block_size", type=positive_int, default=1, help="TensorRT: smallest subgraph to convert")
    parser.add_argument("--debug", action="store_true", help="verbose compiler logging")
    parser.add_argument("--no_build_cache", action="store_true",
                        help="export and compile anew, neither loading nor saving a build "
                             "(the cache: $TLLM_CACHE/builds; python build_cache.py list|clear)")
    parser.add_argument(
        "--tune", default="decode", choices=config.TUNE_MODES,
        help="Inductor: coordinate-descent tuning of the generated kernels for the decode graph only (default), "
             "for every graph (prefill and vision encoder too), or none (fastest compile)",
    )
    parser.add_argument("--batch_size", type=positive_int,
                        help="rows decoded together (default: the number of prompts, up to "
                             f"{config.MAX_DEFAULT_BATCH}; one prompt with a larger batch is repeated)")
    return add_quant_args(parser)


def add_quant_args(parser):
    """How to quantize the weights (quantize.py)."""
    parser.add_argument("--quant_format", default="", choices=("", *quantize.FORMATS),
                        help="quantize the weights: fp8 (FP8 weights and per-token activations), int8 (W8A8), "
                             "int4 (weight-only, group-wise), nvfp4 (Blackwell, --backend tensorrt only)")
    parser.add_argument("--quant_algo", default="max", choices=quantize.ALGOS,
                        help="max: scales from each weight's largest magnitude (default); smoothquant: int8 W8A8 "
                             "with activations smoothed, calibrated on text")
    parser.add_argument("--weight_only", action="store_true",
                        help="quantize only the weights (fp8, int8); activations stay 16-bit")
    parser.add_argument("--quant_group_size", type=positive_int,
                        help=f"int4: input channels per scale (default: the first of {quantize.GROUP_SIZES} "
                             "that divides every layer's width)")
    parser.add_argument("--quant_lm_head", action="store_true", help="quantize the LM head too (default: 16-bit)")
    return parser


def add_generation_args(parser):
    """How to decode: length, EOS, sampling."""
    parser.add_argument("--num_tokens", type=positive_int, default=None,
                        help="new tokens to generate (default 128, 64 outside --benchmark)")
    parser.add_argument("--ignore_eos", action="store_true", help="always generate --num_tokens tokens")
    parser.add_argument("--temperature", type=_non_negative_float,
                        help="sample at this temperature (default 0: greedy)")
    parser.add_argument("--top_k", type=non_negative_int, help="sample among the k most likely tokens (0: all)")
    parser.add_argument("--top_p", type=_probability,
                        help="sample among the most likely tokens that hold this much probability (1: all)")
    parser.add_argument("--seed", type=non_negative_int,
                        help="sampling seed: the same seed gives the same tokens (default: a random one, logged)")
    return parser


def add_common_args(parser):
    """The flags both CLIs share."""
    parser.add_argument("--prompt", action="append", dest="prompts",
                        help="the prompt (default: a question for the model); repeat it for a batch of prompts")
    add_model_args(parser)
    add_build_args(parser)
    add_generation_args(parser)
    parser.add_argument("--stream", action="store_true", help="print the text as it is decoded")
    parser.add_argument("--benchmark", action="store_true", help="time prefill and decode on random prompt ids")
    parser.add_argument("--isl", type=positive_int,
                        help="benchmark prompt length (input sequence length; default 2048)")
    parser.add_argument("--iterations", type=positive_int, help="timed benchmark iterations (default 5)")
    parser.add_argument("--warmup", type=non_negative_int, help="untimed benchmark iterations first (default 1)")
    parser.add_argument("--mixed_lengths", action="store_true",
                        help="benchmark a batch of prompts of different lengths (row r: r/(2*batch) shorter than "
                             "--isl), left-padded")
    parser.add_argument("--tp", type=positive_int,
                        help="tensor parallel: shard the model over this many GPUs, one process each, launched "
                             "with torchrun --nproc_per_node N (gloo on CPU)")
    parser.add_argument("--enable_pytorch_run", action="store_true", help="also benchmark a PyTorch baseline")
    parser.add_argument("--baseline", nargs="+", choices=(*config.BASELINES, "torchao", "all"),
                        help="which baselines --enable_pytorch_run measures, one or more (default hf_generate; "
                             "torchao: --quant_format's format quantized by torchao, on hf_compile's static cache "
                             "+ torch.compile; all: the three 16-bit ones, and torchao with --quant_format where it "
                             "runs)")
    parser.add_argument("--profile", metavar="TRACE_JSON",
                        help="with --benchmark: profile one more generation, print its top kernels, save a trace")
    parser.add_argument("--output_json", help="write the run's results to this JSON file (atomically)")
    parser.add_argument("--results_csv", help="append one row per benchmark run to this CSV file")
    return parser


def run_config(args, model_config, vision_language=False, serving=False):
    """The parsed flags as a resolved RunConfig (defaults for this model's type filled in; a
    pre-quantized checkpoint's scheme); a parser may hold any of the groups above."""
    fields = dict(vars(args))
    fields["chat_template"] = not fields.pop("no_chat_template", False)
    fields["build_cache"] = not fields.pop("no_build_cache", False)
    fields["prompts"] = tuple(fields.pop("prompts", None) or ())
    baselines = fields.pop("baseline", None)
    fields["baselines"] = tuple(baselines) if baselines else None
    if "tp" in fields:
        fields["tp"] = tensor_parallel.world() if tensor_parallel.active() else 1
    check_outputs(fields.get("output_json"), fields.get("results_csv"), fields.get("profile"))
    return config.resolve(model_config.model_type, vision_language=vision_language, serving=serving,
                          prequantized=prequantized.scheme(model_config), **fields)


def check_outputs(output_json, results_csv, profile):
    """Refuse, before any work, output files that could not be written: a run is never lost to
    a bad path at its end."""
    outputs = {flag: path for flag, path in (("--output_json", output_json), ("--results_csv", results_csv),
                                               ("--profile", profile)) if path}
    seen = {}
    for flag, path in outputs.items():
        same = seen.setdefault(Path(path).resolve(), flag)
        if same != flag:
            raise UserError(f"{same} and {flag} name the same file {path}")
        problem = write_problem(path)
        if problem:
            raise UserError(f"{flag} {path}: {problem}")
    if results_csv:
        benchmark.check_csv(results_csv)


def write_result(result, run):
    """Write --results_csv and --output_json. Where one fails the others are written anyway and
    the record goes to stdout, then one line says what failed (exit 2)."""
    if not leader():  # every rank has the same record; rank 0 writes it
        return
    failed = [result["benchmark"]["profile_error"]] if "profile_error" in result.get("benchmark", {}) else []
    if run.results_csv and "benchmark" in result:
        try:
            benchmark.append_csv(run.results_csv, benchmark.rows(result))
        except (OSError, UserError) as e:
            failed.append(f"--results_csv {run.results_csv}: {e.strerror if isinstance(e, OSError) else e}")
    if run.output_json:
        try:
            write_json(run.output_json, result)
            log(f"wrote {run.output_json}")
        except OSError as e:
            failed.append(f"--output_json {run.output_json}: {e.strerror or e}")
    if failed:
        print(json.dumps(result, indent=2))
        raise UserError("; ".join(failed) + " (the results are printed above)")


def command(parse, run):
    """A CLI's ``main(argv)``: ``run(parse(argv))``, with bad input ending in one line."""

    @cli_main
    def main(argv=None):
        run(parse(argv))

    return main


def cli_main(main):
    """Run ``main(argv)``; bad input and known failures end in one line on stderr."""

    @functools.wraps(main)
    def wrapper(argv=None):
        tensor_parallel.quiet_followers()
        try:
            with torch.no_grad():
                main(argv)
        except UserError as e:
            fail(str(e), 2)
        except torch.cuda.OutOfMemoryError as e:
            first = str(e).splitlines()[0] if str(e) else ""
            fail(f"out of GPU memory ({first}); lower --batch_size, --isl or --num_tokens", 3)
        except RuntimeError as e:  # (gloo's lost peer is a plain RuntimeError)
            if not tensor_parallel.collective_error(e):
                raise
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            fail(f"tensor parallel: a collective failed, another rank has probably stopped ({first[:200]})", 4)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)
        tensor_parallel.finish()

    return wrapper


def fail(message, code):
    """One line on stderr (from rank 0 alone, under torchrun) and exit ``code``."""
    if tensor_parallel.fail(message, code):
        print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)
