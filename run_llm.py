"""Run a Hugging Face causal LM through torch.export, the attention op, a KV cache pass and a
compiler backend; generate greedily, or with --benchmark time it against PyTorch baselines.

    python run_llm.py                                   # bundled SmolLM2-135M-Instruct, a question
    python run_llm.py --model Qwen/Qwen2.5-0.5B-Instruct --random_weights --benchmark --isl 128
"""

import time

import torch

import benchmark
import models
from export_llm import LastLogits
from pipeline import (ArgumentParser, add_common_args, build_generator, check_args, check_length, cli_main,
                      generate_text, run_record, write_result)
from utils import UserError, log, resolve_device, resolve_dtype

DEFAULT_PROMPT = "What is the capital of France?"


def max_positions(config):
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 1 << 20


def eos_ids(model, tokenizer):
    ids = set()
    for source in (model.generation_config, model.config, tokenizer):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        ids.update(value if isinstance(value, (list, tuple)) else [] if value is None else [value])
    return sorted(ids)


def encode_prompt(tokenizer, prompt, chat_template, batch_size, device):
    if chat_template and tokenizer.chat_template:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, return_dict=False
        )
    else:
        ids = tokenizer(prompt)["input_ids"]
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    return torch.tensor([list(ids)] * batch_size, device=device)


def text_inputs(batch_size, vocab_size, device):
    """Fresh (input_ids, position_ids) of a given length, as export wants them."""

    def make(length):
        ids = torch.randint(0, vocab_size, (batch_size, length), device=device)
        return ids, torch.arange(length, device=device).repeat(batch_size, 1)

    return make


def resolve_precision(args, device, model_type):
    if args.precision is None:
        args.precision = "FP32" if device.type == "cpu" else "BF16" if model_type.startswith("gemma3") else "FP16"
    return resolve_dtype(args.precision, device, model_type)


@cli_main
def main(argv=None):
    parser = add_common_args(ArgumentParser(description=__doc__.splitlines()[0]))
    args = parser.parse_args(argv)
    check_args(args)
    device = resolve_device(args.device)
    config = models.load_config(args.model or str(models.smollm2_dir()), args.random_weights)
    dtype = resolve_precision(args, device, config.model_type)
    log(f"loading {args.model or models.DEFAULT_MODEL} ({'random weights' if args.random_weights else 'weights'}, "
        f"{args.precision}, {device})")
    start = time.perf_counter()
    model, tokenizer, source = models.load_model(args.model, args.random_weights, dtype, device)
    if args.tokenizer:
        tokenizer = models.load_tokenizer(args.tokenizer, model.config)
        if tokenizer is None:
            raise UserError(f"--tokenizer {args.tokenizer}: no tokenizer found there")
    load_s = time.perf_counter() - start

    if args.benchmark:
        input_ids = torch.randint(0, model.config.vocab_size, (args.batch_size, args.isl), device=device)
    else:
        if tokenizer is None:
            raise UserError(
                f"no tokenizer for {args.model} is available offline; pass --tokenizer FOLDER, "
                "or use --benchmark (random prompt ids)"
            )
        input_ids = encode_prompt(tokenizer, args.prompt or DEFAULT_PROMPT, not args.no_chat_template,
                                  args.batch_size, device)
    prompt_len = input_ids.shape[1]
    max_len = prompt_len + args.num_tokens
    check_length(max_len, max_positions(model.config), f"{prompt_len} prompt tokens + {args.num_tokens} new tokens")

    make_inputs = text_inputs(args.batch_size, model.config.vocab_size, device)
    gen, backend, timings = build_generator(
        LastLogits(model), make_inputs, (1, 1), args, device, dtype, max_len, (input_ids, None)
    )
    timings["load_s"] = load_s
    result = run_record(args, args.model or models.DEFAULT_MODEL, source, backend, device, prompt_len, timings)
    if args.benchmark:
        result["benchmark"] = benchmark.run(gen, input_ids, args, model, device)
        if args.enable_pytorch_run:
            result["baselines"] = benchmark.run_baselines(model, input_ids, args, device)
        benchmark.report(result, args)
    else:
        result.update(generate_text(gen, input_ids, None, input_ids, args, tokenizer, eos_ids(model, tokenizer)))
    write_result(result, args)

if __name__ == "__main__":
    main()
