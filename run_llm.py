"""Run a Hugging Face causal LM through torch.export, the attention op, a KV cache pass and a
compiler backend; generate greedily, or with --benchmark time it against PyTorch baselines.

    python run_llm.py                                   # bundled SmolLM2-135M-Instruct, a question
    python run_llm.py --model Qwen/Qwen2.5-0.5B-Instruct --random_weights --benchmark --isl 128
"""

import time

import torch

import benchmark
import build_cache
import cli
import models
from config import RunConfig
from export_llm import LastLogits
from pipeline import build_generator, generate_text, run_record
from utils import log, resolve_device

DEFAULT_PROMPT = "What is the capital of France?"


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


def parse(argv=None) -> RunConfig:
    """The command line as a resolved RunConfig."""
    args = cli.add_common_args(cli.ArgumentParser(description=__doc__.splitlines()[0])).parse_args(argv)
    args.device = str(resolve_device(args.device))  # before anything slow: no GPU fails at once
    model_config = models.load_config(args.model, args.random_weights)
    return cli.run_config(args, model_config.model_type)


def run(config: RunConfig) -> dict:
    """Load, build, then generate or benchmark; returns the run's JSON record (also written to
    --output_json)."""
    device = config.torch_device
    model_config = models.load_config(config.model, config.random_weights)
    models.check_architecture(model_config)
    tokenizer = None
    # The prompt first: a tokenizer or prompt that cannot work fails before the weights load.
    if not config.benchmark:
        tokenizer = models.prompt_tokenizer(config.model, config.random_weights, config.tokenizer, model_config)
        models.require_tokenizer(tokenizer, config.model_name)
        input_ids = encode_prompt(tokenizer, config.prompt or DEFAULT_PROMPT, config.chat_template,
                                  config.batch_size, device)
        models.check_token_ids(input_ids, model_config,
                               f"--tokenizer {config.tokenizer}" if config.tokenizer else "the model's tokenizer")
    prompt_len = config.isl if config.benchmark else input_ids.shape[1]
    max_len = models.cache_length(model_config, prompt_len, config.num_tokens, exact=config.benchmark)
    log(f"loading {config.model_name} ({'random weights' if config.random_weights else 'weights'}, "
        f"{config.precision}, {device})")
    start = time.perf_counter()
    model, _, source = models.load_model(config.model, config.random_weights, config.dtype, device,
                                         with_tokenizer=False, config=model_config)
    load_s = time.perf_counter() - start
    if config.benchmark:  # (drawn after the weights, from the generator their seed left, as before)
        input_ids = torch.randint(0, model.config.vocab_size, (config.batch_size, config.isl), device=device)

    make_inputs = text_inputs(config.batch_size, model.config.vocab_size, device)
    identity = build_cache.model_identity(source, config.random_weights, model_config)
    gen, timings, cached = build_generator(LastLogits(model), make_inputs, (1, 1), config, max_len, (input_ids, None),
                                           identity)
    timings["load_s"] = load_s
    result = run_record(config, source, prompt_len, timings, cached)
    if config.benchmark:
        result["benchmark"] = benchmark.run(gen, input_ids, config, model)
        if config.enable_pytorch_run:
            result["baselines"] = benchmark.run_baselines(model, input_ids, config)
        benchmark.report(result, config)
    else:
        eos = models.eos_ids(model.generation_config, model.config, tokenizer)
        result.update(generate_text(gen, input_ids, None, input_ids, config, tokenizer, eos))
    cli.write_result(result, config)
    return result


main = cli.command(parse, run)


if __name__ == "__main__":
    main()
