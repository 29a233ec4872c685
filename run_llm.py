"""Run a Hugging Face causal LM through torch.export, the attention op, a KV cache pass and a
compiler backend; generate greedily, or with --benchmark time it against PyTorch baselines.

    python run_llm.py                                   # bundled SmolLM2-135M-Instruct, a question
    python run_llm.py --model Qwen/Qwen2.5-0.5B-Instruct --random_weights --benchmark --isl 128
"""

import json
import time
from pathlib import Path

import torch

import benchmark
import build_cache
import chat
import cli
import models
import quantize
import tensor_parallel
from config import RunConfig
from detokenize import printer
from export_llm import LastLogits
from generate import generate
from pipeline import Built, build_generator, decode_text, run_record
from utils import UserError, log, resolve_device

WARM_PROMPT = 16  # a chat's or a server's warm-up prompt: compiles the graphs before the first request

DEFAULT_PROMPT = "What is the capital of France?"


def prompt_ids(tokenizer, prompt, chat_template=True):
    """Token ids of a text (one user message, under the chat template where asked and the
    tokenizer has one) or of a list of chat messages."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    return chat.conversation_ids(tokenizer, messages, chat_template)


def read_prompts_file(path):
    """The prompts of --prompts_file: one per line, or JSON lines with a "prompt" field."""
    try:
        lines = [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--prompts_file {path}: {getattr(e, 'strerror', None) or e}") from None
    if not lines:
        raise UserError(f"--prompts_file {path} holds no prompt")
    if not lines[0].lstrip().startswith("{"):
        return lines
    prompts = []
    for number, line in enumerate(lines, 1):
        try:
            prompt = json.loads(line)["prompt"]
        except (ValueError, KeyError, TypeError):
            raise UserError(f"--prompts_file {path}, line {number}: not a JSON object with a \"prompt\" "
                            "string") from None
        if not isinstance(prompt, str):
            raise UserError(f"--prompts_file {path}, line {number}: \"prompt\" is not a string")
        prompts.append(prompt)
    return prompts


def text_inputs(batch_size, vocab_size, device):
    """Fresh (input_ids, position_ids) of a given length, as export wants them."""

    def make(length):
        ids = torch.randint(0, vocab_size, (batch_size, length), device=device)
        return ids, torch.arange(length, device=device).repeat(batch_size, 1)

    return make


def parse(argv=None) -> RunConfig:
    """The command line as a resolved RunConfig."""
    parser = cli.add_common_args(cli.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--prompts_file", help="prompts, one per line (or JSON lines with a \"prompt\" field), "
                                               "run as batches of --batch_size")
    parser.add_argument("--interactive", action="store_true",
                        help="chat on the terminal, turn by turn, with the model's chat template (implies --stream)")
    args = parser.parse_args(argv)
    # Before anything slow: no GPU fails at once. Under torchrun, each rank's GPU and the group.
    args.device = str(tensor_parallel.setup(args.tp, resolve_device(args.device), "run_llm.py"))
    if args.prompts_file:
        if args.prompts:
            raise UserError("--prompt and --prompts_file both give the prompts: choose one")
        args.prompts = read_prompts_file(args.prompts_file)
    del args.prompts_file
    if args.interactive and args.prompts:
        raise UserError("--interactive reads the prompts from the terminal: no --prompt")
    model_config = models.load_config(args.model, args.random_weights)
    tensor_parallel.check(model_config, args.tp)
    return cli.run_config(args, model_config)


def build(config: RunConfig, prompt_len=None, tokenizer=None, model_config=None) -> Built:
    """Load the model (and, unless benchmarking, its tokenizer) and build its generator. The
    cache holds ``prompt_len`` + --num_tokens positions (rounded up; --benchmark: --isl exactly),
    or --max_len; with no ``prompt_len`` (a chat, a server) 4096 or the model's positions.
    ``model_config``: where the caller has read it (a hub id's read asks the hub)."""
    device = config.torch_device
    if model_config is None:
        model_config = models.load_config(config.model, config.random_weights)
        models.check_architecture(model_config)
    if tokenizer is None and (not config.benchmark or config.stream):  # (a streamed benchmark decodes text)
        tokenizer = load_tokenizer(config, model_config)
    if config.benchmark:
        prompt_len = config.isl
    if prompt_len is None:
        max_len = config.max_len or min(models.SESSION_CACHE_LENGTH, models.positions(model_config))
        models.cache_length(model_config, 1, config.num_tokens, False, max_len)  # (checks --max_len)
    else:
        max_len = models.cache_length(model_config, prompt_len, config.num_tokens, config.benchmark, config.max_len)
    log(f"loading {config.model_name} ({'random weights' if config.random_weights else 'weights'}, "
        f"{config.precision}, {device})")
    start = time.perf_counter()
    model, _, source = models.load_model(config.model, config.random_weights, config.dtype, device,
                                         with_tokenizer=False, config=model_config)
    load_s = time.perf_counter() - start
    make_inputs = text_inputs(config.batch_size, model.config.vocab_size, device)
    # Warm up on the prompt's shape, so the first real prefill compiles (and captures) nothing.
    warm = make_inputs(config.isl if config.benchmark else min(prompt_len or WARM_PROMPT, max_len - 1))[0]
    identity = build_cache.model_identity(source, config.random_weights, model_config)

    def calibration():  # SmoothQuant's text, in the model's tokenizer even for a benchmark
        text_tokenizer = tokenizer or models.prompt_tokenizer(config.model, config.random_weights, config.tokenizer,
                                                              model_config)
        return quantize.calibration_ids(text_tokenizer, model.config.vocab_size, device)

    gen, timings, cached = build_generator(LastLogits(model), make_inputs, (1, 1), config, max_len, (warm, None),
                                           identity, calibration)
    timings["load_s"] = load_s
    eos = [] if tokenizer is None else models.eos_ids(model.generation_config, model.config, tokenizer)
    return Built(gen, tokenizer, eos, run_record(config, source, prompt_len, max_len, timings, cached, model),
                 model)


def load_tokenizer(config, model_config):
    """The prompt's tokenizer, found before any weights load: one that cannot work fails first."""
    tokenizer = models.prompt_tokenizer(config.model, config.random_weights, config.tokenizer, model_config)
    models.require_tokenizer(tokenizer, config.model_name)
    return tokenizer


def encode_prompts(config, tokenizer, model_config):
    """Each prompt's ids (the default question where none is given; one prompt fills a batch)."""
    texts = list(config.prompts) or [DEFAULT_PROMPT]
    if len(texts) == 1:
        texts *= config.batch_size
    ids = [prompt_ids(tokenizer, text, config.chat_template) for text in texts]
    name = f"--tokenizer {config.tokenizer}" if config.tokenizer else "the model's tokenizer"
    for row in ids:
        models.check_token_ids(torch.tensor([row]), model_config, name)
    return texts, ids


def write_out(text):
    print(text, end="", flush=True)


def generate_all(built, texts, ids, config):
    """Each prompt's new tokens and text, in batches of --batch_size; prints each answer
    (streamed with --stream) and returns the JSON fields, one entry per prompt."""
    stop = [] if config.ignore_eos else built.eos_ids
    out = {"prompts": texts, "input_token_ids": ids, "generated_token_ids": [], "generated_text": [],
           "finish_reasons": []}
    for first in range(0, len(ids), config.batch_size):
        batch = ids[first:first + config.batch_size]
        on_step, end = printer(built.tokenizer, batch[0], write_out) if config.stream else (None, None)
        rows = generate(built.gen, batch, config.num_tokens, stop, config.sampling, on_step, config.prefill_chunk)
        if end:
            end()
        for number, row in enumerate(rows, first):
            text = decode_text(built.tokenizer, row)
            if not config.stream:
                print(text if len(ids) == 1 else f"[{number}] {text}")
            out["generated_token_ids"].append(row)
            out["generated_text"].append(text)
            out["finish_reasons"].append("stop" if row and row[-1] in stop else "length")
    return out


def run(config: RunConfig) -> dict:
    """Load, build, then generate, chat or benchmark; returns the run's JSON record (also written
    to --output_json)."""
    if config.interactive:
        built = build(config)
        result = {**built.record, "chat": chat.run(built, config)}
        cli.write_result(result, config)
        return result
    model_config = models.load_config(config.model, config.random_weights)
    models.check_architecture(model_config)
    tokenizer = texts = ids = None
    # The prompt first: a tokenizer or prompt that cannot work fails before the weights load.
    if not config.benchmark:
        tokenizer = load_tokenizer(config, model_config)
        texts, ids = encode_prompts(config, tokenizer, model_config)
    built = build(config, None if config.benchmark else max(map(len, ids)), tokenizer, model_config)
    result = dict(built.record)
    if config.benchmark:
        # (drawn after the weights, from the generator their seed left, as before)
        input_ids = torch.randint(0, model_config.vocab_size, (config.batch_size, config.isl),
                                  device=config.torch_device)
        result["benchmark"] = benchmark.run(built.gen, input_ids, config, built.model, tokenizer=built.tokenizer)
        if config.enable_pytorch_run:
            result["baselines"] = benchmark.run_baselines(built.model, input_ids, config)
        benchmark.report(result, config)
    else:
        result.update(generate_all(built, texts, ids, config))
    cli.write_result(result, config)
    return result


main = cli.command(parse, run)


if __name__ == "__main__":
    main()
