"""The flow both command-line tools share: their common flags, building a Generator for a
language model (export -> cache pass -> compile -> warm-up) with progress lines, and the
top-level error handling that turns bad input into one line and a non-zero exit."""

import argparse
import copy
import functools
import importlib.util
import sys
import time

import torch

import backends
import dynamic_cache
import export_llm
import fuse_linears
import register_sdpa
import static_cache_v1
import static_cache_v2
from generate import CACHE_MODES, Generator, greedy, prefill
from utils import PRECISIONS, UserError, log, versions, write_json


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
    parser.add_argument("--no_chat_template", action="store_true", help="feed the prompt as is, without the chat template")
    parser.add_argument("--precision", default=None, choices=PRECISIONS,
                        help="compute dtype (default: FP16 on GPU, BF16 for Gemma 3; FP32 on CPU)")
    parser.add_argument("--num_tokens", type=positive_int, default=None,
                        help="new tokens to generate (default 128, 64 outside --benchmark)")
    parser.add_argument("--ignore_eos", action="store_true", help="always generate --num_tokens tokens")
    parser.add_argument("--cache", default="static_v2", choices=CACHE_MODES,
                        help="KV cache: static_v2 (fast, default), static_v1 (functional), dynamic (grows), '' (none)")
    parser.add_argument("--prefill_chunk", type=non_negative_int, default=0,
                        help="feed the prompt in chunks of this many tokens (static_v2 only)")
    parser.add_argument("--backend", default="auto", choices=backends.BACKENDS)
    parser.add_argument("--device", default="auto", help="cpu, cuda or cuda:N (default: cuda if present)")
    parser.add_argument("--cudagraph", action="store_true", help="replay each decode step as a CUDA graph (static_v2)")
    parser.add_argument("--decode_attention", default="triton", choices=register_sdpa.DECODE_KERNELS,
                        help="static_v2 decode attention on CUDA: triton (split-K flash decoding, default) or sdpa "
                             "(PyTorch's masked SDPA); CPU always uses SDPA")
    parser.add_argument("--min_block_size", type=positive_int, default=1, help="TensorRT: smallest subgraph to convert")
    parser.add_argument("--debug", action="store_true", help="verbose compiler logging")
    parser.add_argument(
        "--tune", default="decode", choices=backends.TUNE_MODES,
        help="Inductor: coordinate-descent tuning of the generated kernels for the decode graph only (default), "
             "for every graph (prefill and vision encoder too), or none (fastest compile)",
    )
    parser.add_argument("--batch_size", type=positive_int, default=1)
    parser.add_argument("--benchmark", action="store_true", help="time prefill and decode on random prompt ids")
    parser.add_argument("--isl", type=positive_int, default=2048, help="benchmark prompt length (input sequence length)")
    parser.add_argument("--iterations", type=positive_int, default=5, help="timed benchmark iterations")
    parser.add_argument("--warmup", type=non_negative_int, default=1, help="untimed benchmark iterations first")
    parser.add_argument("--enable_pytorch_run", action="store_true", help="also benchmark a PyTorch baseline")
    parser.add_argument("--baseline", nargs="+", default=["hf_generate"],
                        choices=("hf_generate", "hf_compile", "no_cache", "all"),
                        help="which baselines --enable_pytorch_run measures, one or more (default hf_generate; "
                             "all: the three)")
    parser.add_argument("--profile", metavar="TRACE_JSON",
                        help="with --benchmark: profile one more generation, print its top kernels, save a trace")
    parser.add_argument("--output_json", help="write the run's results to this JSON file (atomically)")
    parser.add_argument("--results_csv", help="append one row per benchmark run to this CSV file")
    return parser


def check_args(args):
    if args.prefill_chunk and args.cache != "static_v2":
        raise UserError("--prefill_chunk needs --cache static_v2")
    if args.cudagraph and args.cache != "static_v2":
        raise UserError("--cudagraph needs --cache static_v2 (the only mode whose decode step has fixed shapes)")
    if args.num_tokens is None:
        args.num_tokens = 128 if args.benchmark else 64


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


def check_length(needed, limit, what):
    if needed > limit:
        raise UserError(f"{what} need {needed} positions but the model has {limit}")


def build_generator(module, make_inputs, seq_dims, args, device, dtype, max_len, warm_inputs):
    """Export ``module(x, position_ids)``, rewrite its cache, compile it and warm it up.

    ``make_inputs(length)`` returns fresh example inputs ``(x, position_ids)`` for export;
    ``warm_inputs`` are inputs of the real prompt's shape, run once so that compilers compile
    (and CUDA graphs capture) now rather than inside the first timed step.
    Returns the Generator, the backend's name and timings in seconds.
    """
    timings = {}
    backend = backends.choose_backend(args.backend, device)
    if args.cudagraph and device.type != "cuda":
        raise UserError("--cudagraph needs a CUDA device")
    start = time.perf_counter()
    log(f"exporting {type(module).__name__} with torch.export")
    gm = export_llm.add_next_token(export_llm.export_graph(module, make_inputs(2), seq_dims, max_len))
    fuse_linears.apply(gm)
    layers = len(export_llm.attention_nodes(gm))
    inplace = backend != "tensorrt"
    first = None
    if args.cache == "static_v2":
        # Same module attributes (weights shared), its own copy of the graph.
        first = torch.fx.GraphModule(gm, copy.deepcopy(gm.graph))
        static_cache_v2.apply(first, args.batch_size, max_len, inplace=inplace, fresh=True)
        static_cache_v2.apply(gm, args.batch_size, max_len, inplace=inplace)
        # The decode graph's Triton kernels: CUDA only, and TensorRT runs its own
        triton_kernels = (backend != "tensorrt" and device.type == "cuda"
                          and importlib.util.find_spec("triton") is not None)
        if args.decode_attention == "triton" and backend != "tensorrt":
            layers_split_k = register_sdpa.use_split_k_decode(gm, args.cudagraph) if triton_kernels else 0
            log(f"decode attention: split-K Triton kernel in {layers_split_k} of {layers} layers"
                if layers_split_k else "decode attention: SDPA (the Triton kernel needs CUDA and triton)")
        if triton_kernels:
            import gated_down

            layers_gated_down = gated_down.use_gated_down(gm, args.cudagraph)
            log(f"gated MLP down projection: Triton kernel in {layers_gated_down} of {layers} layers")
    elif args.cache == "static_v1":
        static_cache_v1.apply(gm, args.batch_size, max_len)
    elif args.cache == "dynamic":
        dynamic_cache.apply(gm, args.batch_size)
    timings["export_s"] = time.perf_counter() - start
    log(f"exported: {layers} attention ops, {gm.meta['fused_linears']} fused linear groups, "
        f"cache {args.cache or 'none'} ({timings['export_s']:.1f} s)")

    start = time.perf_counter()
    log(f"compiling with {backend}" + (" + CUDA graphs" if args.cudagraph else ""))
    graph = backends.compile_graph(gm, backend, dtype, max_len, args.min_block_size, args.debug,
                                   tune=args.tune != "none", by_layer=args.cudagraph)
    if first is not None:
        first = backends.compile_graph(first, backend, dtype, max_len, args.min_block_size, args.debug,
                                       tune=args.tune == "all", by_layer=args.cudagraph)
    own_cudagraph = args.cudagraph and backend != "tensorrt"
    if args.cudagraph and not own_cudagraph:
        import tensorrt_backend

        tensorrt_backend.enable_cudagraphs(True)
    gen = Generator(graph, gm.meta.get("cache_shapes", []), args.cache, args.batch_size, max_len, dtype, device,
                    inplace=inplace, cudagraph=own_cudagraph, first_graph=first)
    x, positions = warm_inputs
    prefill(gen, x, positions, args.prefill_chunk)
    # Decode steps get a fresh one-token tensor; a slice of the prompt has other strides, on
    # which torch.compile guards: warming up with it left a recompile for the first timed step.
    last = x[:, -1:].clone(memory_format=torch.contiguous_format)
    for _ in range(2):
        if gen.length < max_len:
            gen.step(last, None if positions is None else positions[..., -1:] + 1)
    gen.reset()
    if device.type == "cuda":
        torch.cuda.synchronize()
    timings["compile_s"] = time.perf_counter() - start
    log(f"compiled ({timings['compile_s']:.1f} s)")
    return gen, backend, timings


def run_record(args, model, source, backend, device, prompt_len, timings, **extra):
    """The JSON fields every run shares (run_llm.py and run_vlm.py add their own)."""
    return {
        "model": model,
        "source": str(source),
        "random_weights": args.random_weights,
        **extra,
        "backend": backend,
        "cache": args.cache,
        "cudagraph": args.cudagraph,
        "decode_attention": args.decode_attention,
        "precision": args.precision,
        "device": str(device),
        "batch_size": args.batch_size,
        "isl": prompt_len,
        "num_tokens": args.num_tokens,
        "timings_s": timings,
        "versions": versions(),
    }


def until_eos(tokens, eos):
    """The tokens up to and including the first EOS (later ones are padding)."""
    ends = [i for i, t in enumerate(tokens) if t in eos]
    return tokens[: ends[0] + 1] if ends else tokens


def generate_text(gen, x, position_ids, input_ids, args, tokenizer, eos_ids, embed=None, decode_positions=None):
    """Greedy generation from a prompt; prints the first row's text, returns the JSON fields."""
    stop = [] if args.ignore_eos else eos_ids
    _, token = prefill(gen, x, position_ids, args.prefill_chunk)
    rows = greedy(gen, token, args.num_tokens, stop, embed=embed, decode_positions=decode_positions).tolist()
    new_tokens = [until_eos(row, stop) for row in rows]
    # (BPE tokenizers ignore the clean-up anyway; saying so silences their warning)
    texts = [tokenizer.decode(row, skip_special_tokens=True, clean_up_tokenization_spaces=False).strip()
             for row in new_tokens]
    print(texts[0])
    return dict(input_token_ids=input_ids.tolist(), generated_token_ids=new_tokens, generated_text=texts)


def write_result(result, args):
    if args.output_json:
        write_json(args.output_json, result)
        log(f"wrote {args.output_json}")
