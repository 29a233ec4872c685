"""One run's configuration: what to run, how to build it and what to measure. ``resolve`` fills
in every default (device, precision, backend, lengths, which decode kernels can run here) once;
the engine reads the result and nothing changes it afterwards."""

import dataclasses
import importlib.util
import random
from dataclasses import dataclass

import torch

import backends
import cache_modes
import models
import quantize
import torchao_baseline
from sampling import Sampling
from utils import PRECISIONS, UserError, log, resolve_device, resolve_dtype

BASELINES = ("hf_generate", "hf_compile", "no_cache")  # 16-bit; "torchao" (quantized) is asked by name or "all"
TUNE_MODES = ("decode", "all", "none")
DECODE_KERNELS = ("triton", "sdpa")
VISION_MODES = ("auto", "eager", "compile")
MAX_DEFAULT_BATCH = 32  # prompts beyond it run in further batches unless --batch_size says otherwise


@dataclass(frozen=True)
class RunConfig:
    # what to run
    model: str | None = None  # hub id or folder; None: the bundled default model
    tokenizer: str | None = None
    random_weights: bool = False
    prompts: tuple[str, ...] = ()  # none: the default question
    chat_template: bool = True
    interactive: bool = False  # a multi-turn chat on the terminal (chat.py)
    stream: bool = False  # print the text as it is decoded
    image_path: str | None = None  # vision-language models
    vision: str = "auto"
    max_tiles: int | None = None
    # how to build it
    device: str = "cpu"
    precision: str = "FP32"
    backend: str = "eager"
    cache: str = "static_v2"
    prefill_chunk: int = 0
    cudagraph: bool = False
    decode_attention: str = "sdpa"  # what runs: triton (split-K kernel) or sdpa
    min_block_size: int = 1
    debug: bool = False
    build_cache: bool = True  # load a matching build from the build cache, or save this one there
    tune: str = "decode"  # Inductor's coordinate-descent tuning: decode graph, all graphs, none
    batch_size: int = 1
    tp: int = 1  # ranks the model is sharded over (tensor_parallel.py; torchrun launches them)
    max_len: int | None = None  # the KV cache's positions (None: what the prompt needs, rounded up)
    sampler: bool = False  # the graph samples (sampling.py); a row with temperature 0 stays greedy
    quant_format: str = ""  # quantize.py: "" (16-bit), fp8, int8, int4, nvfp4
    quant_algo: str = "max"
    weight_only: bool = False
    quant_group_size: int = 0  # INT4; 0: the first of quantize.GROUP_SIZES that divides every width
    quant_lm_head: bool = False
    prequantized: str = ""  # prequantized.py: the checkpoint's own FP8 scheme, if it has one
    num_tokens: int = 64
    ignore_eos: bool = False
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    # what to measure
    benchmark: bool = False
    isl: int = 2048
    iterations: int = 5
    warmup: int = 1
    enable_pytorch_run: bool = False
    mixed_lengths: bool = False  # a batch's prompts of different lengths, left-padded
    baselines: tuple[str, ...] = ("hf_generate",)
    profile: str | None = None
    output_json: str | None = None
    results_csv: str | None = None
    # Decode-step features, each on by default where it applies; benchmarks/inductor_ab.py turns
    # them off one by one to measure what each gains (benchmarks/HISTORY.md).
    gated_down: bool = False  # the Triton down projection of gated MLPs (resolved: CUDA + triton)
    split_bias: bool = True  # Inductor on CUDA: biased products as product + bias
    tuning_flush: bool = True  # Inductor's tuner flushes 256 MB before each timing
    combo_kernels: bool = True  # Inductor on CUDA: independent small kernels launched as one
    pdl: bool = True  # Inductor on CUDA: programmatic dependent launch of its kernels
    kernel_pdl: bool = True  # our Triton kernels launched with PDL inside CUDA graphs
    fed_back: bool = True  # a replayed greedy step writes the next step's inputs itself
    layer_split: bool = True  # with CUDA graphs, Inductor compiles each distinct layer piece once

    @property
    def dtype(self):
        return PRECISIONS[self.precision]

    @property
    def torch_device(self):
        return torch.device(self.device)

    @property
    def on_cuda(self):
        return self.device.startswith("cuda")

    @property
    def model_name(self):
        return self.model or models.DEFAULT_MODEL

    @property
    def quantization(self):
        """For the JSON record: the quantization flags, or None."""
        if self.prequantized:
            return {"format": "fp8", "algo": "max", "weight_only": False, "group_size": None, "lm_head": False,
                    "checkpoint": self.prequantized}
        if not self.quant_format:
            return None
        return {"format": self.quant_format, "algo": self.quant_algo, "weight_only": self.weight_only,
                "group_size": self.quant_group_size or None, "lm_head": self.quant_lm_head}

    @property
    def sampling(self):
        return Sampling(self.temperature, self.top_k, self.top_p, self.seed)


def resolve_sampling(temperature, top_k, top_p, seed, serving=False):
    """The sampling flags as one Sampling, checked; a sampled run without --seed gets a random
    one, said in the log (and the JSON record), so it can be repeated. A server's flags are
    only the defaults of requests that leave them out (and each request has its own seed)."""
    sampling = Sampling(temperature or 0.0, top_k or 0, 1.0 if top_p is None else top_p, seed or 0)
    problem = sampling.check()
    if problem:
        raise UserError(f"--{problem}")
    if serving:
        return sampling
    if sampling.temperature == 0 and (top_k or top_p is not None or seed is not None):
        raise UserError("--top_k, --top_p and --seed shape sampling, which needs --temperature > 0 "
                        "(decoding is greedy without it)")
    if sampling.temperature > 0 and seed is None:
        sampling = dataclasses.replace(sampling, seed=random.randrange(1 << 31))
        log(f"sampling with --seed {sampling.seed} (pass it to repeat this run)")
    return sampling


def check_tp(serving, prequantized, fields):
    """One UserError line for what a sharded run cannot do (yet)."""
    refused = {"--enable_pytorch_run (the baselines run transformers' model on one GPU)":
               fields.get("enable_pytorch_run"),
               "--interactive (rank 0 alone reads the terminal)": fields.get("interactive"),
               "a pre-quantized checkpoint": prequantized, "the server": serving}
    for what, given in refused.items():
        if given:
            raise UserError(f"--tp > 1: not with {what}")


def triton_kernels_available(device, backend):
    """Our Triton decode kernels run on CUDA with triton installed, and not inside TensorRT."""
    return device.type == "cuda" and backend != "tensorrt" and importlib.util.find_spec("triton") is not None


def check_flags(benchmark, num_tokens, isl, iterations, warmup, baselines, batch_size, fields):
    """Refuse a flag that would have no effect in the chosen mode, and an empty or undecodable
    prompt: a silent default in their place would mislead."""
    if not benchmark:
        given = {"--isl": isl, "--iterations": iterations, "--warmup": warmup, "--baseline": baselines,
                 "--enable_pytorch_run": fields.get("enable_pytorch_run") or None,
                 "--profile": fields.get("profile"), "--results_csv": fields.get("results_csv"),
                 "--mixed_lengths": fields.get("mixed_lengths") or None}
        extra = [flag for flag, value in given.items() if value is not None]
        if extra:
            raise UserError(f"{', '.join(extra)} {'has' if len(extra) == 1 else 'have'} no effect without --benchmark")
    else:
        if fields.get("prompts"):
            raise UserError("--prompt has no effect with --benchmark, which times random prompt ids of --isl tokens")
        if fields.get("interactive"):
            raise UserError("--interactive and --benchmark are two different runs: choose one")
        if fields.get("ignore_eos"):
            raise UserError("--ignore_eos has no effect with --benchmark, which always generates --num_tokens tokens")
        if fields.get("mixed_lengths") and (batch_size or 1) < 2:
            raise UserError("--mixed_lengths spreads the prompt lengths of a batch: it needs --batch_size > 1")
        if num_tokens == 1:
            raise UserError("--benchmark needs --num_tokens >= 2: TPOT times the steps after the first token")
        if baselines is not None and not fields.get("enable_pytorch_run"):
            raise UserError("--baseline has no effect without --enable_pytorch_run")
    for prompt in fields.get("prompts", ()):
        if not prompt.strip():
            raise UserError("--prompt is empty")
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError:
            raise UserError("--prompt is not valid UTF-8 text") from None


def resolve(model_type, *, device="auto", precision=None, backend="auto", num_tokens=None, benchmark=False,
            decode_attention="triton", gated_down=True, isl=None, iterations=None, warmup=None, baselines=None,
            vision_language=False, serving=False, batch_size=None, temperature=None, top_k=None, top_p=None, seed=None,
            prequantized=None, **fields):
    """The run's configuration with every default filled in, checked; ``model_type`` is the
    model config's (defaults differ per family). Other fields are RunConfig's, as given; None
    means not given. ``serving``: for serve.py, whose requests bring their own sampling."""
    check_flags(benchmark, num_tokens, isl, iterations, warmup, baselines, batch_size, fields)
    sampling = resolve_sampling(temperature, top_k, top_p, seed, serving)
    prompts = fields.get("prompts", ())
    if batch_size is None:  # a batch of the prompts given, up to MAX_DEFAULT_BATCH at a time
        batch_size = min(max(len(prompts), 1), MAX_DEFAULT_BATCH)
    cache = fields.get("cache", RunConfig.cache)
    mode = cache_modes.MODES[cache]
    if fields.get("prefill_chunk") and not mode.FIXED_SHAPES:
        raise UserError("--prefill_chunk needs --cache static_v2")
    if fields.get("cudagraph") and not mode.FIXED_SHAPES:
        raise UserError("--cudagraph needs --cache static_v2 (the only mode whose decode step has fixed shapes)")
    torch_device = resolve_device(device)
    if fields.get("cudagraph") and torch_device.type != "cuda":
        raise UserError("--cudagraph needs a CUDA device")
    if precision is None:
        # BF16 for Gemma 3 (it overflows in FP16) and for the VLMs (their vision towers are trained in it)
        bf16 = vision_language or model_type.startswith("gemma3")
        precision = "FP32" if torch_device.type == "cpu" else "BF16" if bf16 else "FP16"
    resolve_dtype(precision, torch_device, model_type)  # notes about the choice
    backend = backends.choose_backend(backend, torch_device)
    triton = triton_kernels_available(torch_device, backend) and mode.FIXED_SHAPES
    if decode_attention == "triton" and not triton and backend != "tensorrt" and torch_device.type == "cuda":
        log("decode attention: SDPA (the split-K Triton kernel needs CUDA, triton and --cache static_v2)")
    if fields.get("quant_group_size") is None:
        fields.pop("quant_group_size", None)  # (argparse's None: the default)
    quantize.check_flags(fields.get("quant_format", ""), fields.get("quant_algo", "max"), fields.get("weight_only"),
                         fields.get("quant_group_size"), fields.get("quant_lm_head"), backend)
    if prequantized:
        if fields.get("quant_format"):
            raise UserError(f"the model is already quantized ({prequantized} FP8 checkpoint): drop --quant_format")
        if backend == "tensorrt" or vision_language:
            raise UserError(f"a pre-quantized {prequantized} checkpoint runs on --backend inductor or eager, "
                            "for text models")
        if fields.get("enable_pytorch_run"):
            raise UserError("--enable_pytorch_run: the baselines run transformers' own model, which a pre-quantized "
                            "checkpoint is not loaded as here")
        fields["prequantized"] = prequantized
    if fields.get("quant_algo") == "smoothquant" and vision_language:
        raise UserError("--quant_algo smoothquant calibrates on text through a language model's own inputs: "
                        "not yet for vision-language models (use --weight_only or fp8)")
    baselines = baselines or ("hf_generate",)
    named, every = "torchao" in baselines, "all" in baselines
    if every:  # the no-cache loop is text-only; torchao joins below
        baselines = BASELINES[:2] if vision_language else BASELINES
    elif vision_language and fields.get("enable_pytorch_run") and "no_cache" in baselines:
        raise UserError("--baseline no_cache is for text models; choose hf_generate, hf_compile or all")
    baselines = tuple(dict.fromkeys(baselines))
    sampler = sampling.temperature > 0 or serving or fields.get("interactive", False)
    if sampler and backend == "tensorrt":
        raise UserError("sampling runs in the graph on --backend inductor or eager, not yet on tensorrt "
                        "(greedy decoding runs there)")
    if fields.get("tp", 1) > 1:
        check_tp(serving, prequantized, fields)
    if fields.get("stream") and batch_size > 1:
        raise UserError("--stream prints one text as it is decoded: it needs a batch of one prompt")
    if fields.get("interactive") and batch_size > 1:
        raise UserError("--interactive holds one conversation: it needs --batch_size 1")
    run = RunConfig(
        batch_size=batch_size, sampler=sampler, temperature=sampling.temperature, top_k=sampling.top_k,
        top_p=sampling.top_p, seed=sampling.seed,
        device=str(torch_device), precision=precision, backend=backend,
        num_tokens=num_tokens or (128 if benchmark else 64), benchmark=benchmark, isl=isl or RunConfig.isl,
        iterations=iterations or RunConfig.iterations, warmup=RunConfig.warmup if warmup is None else warmup,
        decode_attention="triton" if decode_attention == "triton" and triton else "sdpa",
        gated_down=gated_down and triton, baselines=baselines, **fields,
    )
    if named or (every and run.quant_format):
        problem = torchao_baseline.problem(run, model_type, vision_language)
        if problem and named:
            raise UserError(f"--baseline torchao: {problem}")
        if problem:  # "all" takes it only where it can run
            log(f"--baseline all leaves torchao out: {problem}")
        else:
            run = dataclasses.replace(run, baselines=tuple(dict.fromkeys((*baselines, "torchao"))))
    return run
