"""The command line both tools share: their common flags, turning them into a RunConfig, and
the top-level error handling that turns bad input into one line and a non-zero exit."""

import argparse
import functools
import sys

import torch

import backends
import cache_modes
import config
from utils import PRECISIONS, UserError, log, write_json


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):  # one line, not a usage block
        self.exit(2, f"error: {message} (see --help)\n")


def _int_at_least(minimum):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


positive_int = _int_at_least(1)
non_negative_int = _int_at_least(0)


def add_common_args(parser):
    parser.add_argument("--model", help="Hugging Face id or local folder (default: the bundled SmolLM2-135M-Instruct)")
    parser.add_argument("--tokenizer", help="tokenizer id or folder, if not the model's own")
    parser.add_argument("--random_weights", action="store_true",
                        help="random weights at the real shape, from the config bundled for --model (no download)")
    parser.add_argument("--prompt", help="the prompt (default: a question for the model)")
    parser.add_argument("--no_chat_template", action="store_true",
                        help="feed the prompt as is, without the chat template")
    parser.add_argument("--precision", default=None, choices=PRECISIONS,
                        help="compute dtype (default: FP16 on GPU, BF16 for Gemma 3; FP32 on CPU)")
    parser.add_argument("--num_tokens", type=positive_int, default=None,
                        help="new tokens to generate (default 128, 64 outside --benchmark)")
    parser.add_argument("--ignore_eos", action="store_true", help="always generate --num_tokens tokens")
    parser.add_argument("--cache", default="static_v2", choices=cache_modes.MODES,
                        help="KV cache: static_v2 (fast, default), static_v1 (functional), dynamic (grows), '' (none)")
    parser.add_argument("--prefill_chunk", type=non_negative_int, default=0,
                        help="feed the prompt in chunks of this many tokens (static_v2 only)")
    parser.add_argument("--backend", default="auto", choices=backends.BACKENDS)
    parser.add_argument("--device", default="auto", help="cpu, cuda or cuda:N (default: cuda if present)")
    parser.add_argument("--cudagraph", action="store_true", help="replay each decode step as a CUDA graph (static_v2)")
    parser.add_argument("--decode_attention", default="triton", choices=config.DECODE_KERNELS,
                        help="static_v2 decode attention on CUDA: triton (split-K flash decoding, default) or sdpa "
                             "(PyTorch's masked SDPA); CPU always uses SDPA")
    parser.add_argument("--min_block_size", type=positive_int, default=1, help="TensorRT: smallest subgraph to convert")
    parser.add_argument("--debug", action="store_true", help="verbose compiler logging")
    parser.add_argument(
        "--tune", default="decode", choices=config.TUNE_MODES,
        help="Inductor: coordinate-descent tuning of the generated kernels for the decode graph only (default), "
             "for every graph (prefill and vision encoder too), or none (fastest compile)",
    )
    parser.add_argument("--batch_size", type=positive_int, default=1)
    parser.add_argument("--benchmark", action="store_true", help="time prefill and decode on random prompt ids")
    parser.add_argument("--isl", type=positive_int, default=2048,
                        help="benchmark prompt length (input sequence length)")
    parser.add_argument("--iterations", type=positive_int, default=5, help="timed benchmark iterations")
    parser.add_argument("--warmup", type=non_negative_int, default=1, help="untimed benchmark iterations first")
    parser.add_argument("--enable_pytorch_run", action="store_true", help="also benchmark a PyTorch baseline")
    parser.add_argument("--baseline", nargs="+", default=["hf_generate"], choices=(*config.BASELINES, "all"),
                        help="which baselines --enable_pytorch_run measures, one or more (default hf_generate; "
                             "all: the three)")
    parser.add_argument("--profile", metavar="TRACE_JSON",
                        help="with --benchmark: profile one more generation, print its top kernels, save a trace")
    parser.add_argument("--output_json", help="write the run's results to this JSON file (atomically)")
    parser.add_argument("--results_csv", help="append one row per benchmark run to this CSV file")
    return parser


def run_config(args, model_type, vision_language=False):
    """The parsed flags as a resolved RunConfig (defaults for this model type filled in)."""
    fields = dict(vars(args))
    fields["chat_template"] = not fields.pop("no_chat_template")
    fields["baselines"] = tuple(fields.pop("baseline"))
    return config.resolve(model_type, vision_language=vision_language, **fields)


def cli_main(main):
    """Run ``main(argv)``; bad input and known failures end in one line on stderr."""

    @functools.wraps(main)
    def wrapper(argv=None):
        try:
            with torch.no_grad():
                main(argv)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except torch.cuda.OutOfMemoryError as e:
            first = str(e).splitlines()[0] if str(e) else ""
            print(f"error: out of GPU memory ({first}); lower --batch_size, --isl or --num_tokens", file=sys.stderr)
            sys.exit(3)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapper


def write_result(result, config):
    if config.output_json:
        write_json(config.output_json, result)
        log(f"wrote {config.output_json}")
