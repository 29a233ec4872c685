"""Qwen2.5-VL for run_vlm.py: image preprocessing without torchvision, the prompt with its image
pad tokens expanded, M-RoPE positions, the language model as an exportable module on
``inputs_embeds``, and the vision encoder, eager or compiled for a fixed resolution.

- Preprocessing: transformers' PIL image processor (``Qwen2VLImageProcessorPil``: resize to
  multiples of 28 px within the pixel budget, normalise, flatten into 14x14x2 patches), then
  ``<|image_pad|>`` expanded to one token per 2x2 patches, as ``Qwen2_5_VLProcessor`` does (that
  class also wants a video processor, which needs torchvision). ``qwen_vl_utils.fetch_image``
  resizes first where it imports (it needs torchvision); both use the same rounding.
- Positions: M-RoPE ``(3, B, S)`` (temporal, height, width) from the model's own
  ``get_rope_index``. During decode every axis is ``cache length + rope delta``, the delta being
  how far the image's 2-D positions pulled the text positions back.
- Vision encoder: by default the Hugging Face module runs eagerly (any resolution). Its windowed
  attention (112 px windows) has a data-dependent layout, so ``torch.export`` cannot take it as
  is; but when both image sides are multiples of 112 px every window holds the same 64 patches,
  and ``StaticVisionEncoder`` runs the same blocks with precomputed window order and rotary
  tables, one batched SDPA per block. It is exported and compiled for that one resolution.
  The reorganisation is exact: run by PyTorch (``--backend eager``) its features are bitwise
  equal to the Hugging Face module's, in FP32 on CPU (tests/test_vlm.py) and in BF16 on an
  H100. Inductor's fused kernels then round differently, as any compiler's would: close to
  the eager features, no longer bitwise equal.
"""

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from transformers import AutoModelForImageTextToText
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil, smart_resize
from transformers.vision_utils import get_vision_position_ids, get_vision_window_index

import models
from utils import log

ARCHITECTURES = {"Qwen2_5_VLForConditionalGeneration"}
SYSTEM_PROMPT = "You are a helpful assistant."

# The published preprocessor_config.json of Qwen2.5-VL (used when the model folder has none).
PREPROCESSOR = dict(
    min_pixels=3136,
    max_pixels=12845056,
    patch_size=14,
    temporal_patch_size=2,
    merge_size=2,
    image_mean=[0.48145466, 0.4578275, 0.40821073],
    image_std=[0.26862954, 0.26130258, 0.27577711],
)


def image_processor(source):
    """The PIL image processor, configured from the folder's preprocessor_config.json if any."""
    kwargs = dict(PREPROCESSOR)
    path = Path(source) / "preprocessor_config.json" if source else None
    if path is not None and path.is_file():
        saved = json.loads(path.read_text())
        size = saved.get("size") or {}
        saved.setdefault("min_pixels", size.get("shortest_edge"))
        saved.setdefault("max_pixels", size.get("longest_edge"))
        kwargs.update({k: saved[k] for k in PREPROCESSOR if saved.get(k) is not None})
    return Qwen2VLImageProcessorPil(**kwargs)


def _fetch_image(image):
    """qwen-vl-utils' resize where it imports (it needs torchvision); else the image as is,
    which the image processor resizes with the same rule."""
    try:
        from qwen_vl_utils import fetch_image
    except Exception:  # ImportError, or a torchvision that does not load
        return image
    return fetch_image({"image": image})


class QwenVL:
    """Qwen2.5-VL as a ``vision_language.VisionLanguageModel``. ``set_image`` keeps the image's
    pixels and patch grid for the calls that follow."""

    name = "Qwen2.5-VL"
    default_vision = "eager"
    position_seq_dim = 2  # position_ids are (3, B, S)

    def __init__(self, hf, tokenizer, source):
        self.hf, self.tokenizer, self.source = hf, tokenizer, source
        self.config = hf.config
        self.text_config = hf.config.text_config
        self.processor = image_processor(source)
        self.lm_module = self.text_model = LanguageModel(hf)
        self.pixel_values = self.grid_thw = self.rope_deltas = None
        self.num_image_tokens = 0

    @classmethod
    def load(cls, model, random_weights, dtype, device, max_tiles=None):
        hf, tokenizer, source = models.load_model(
            model, random_weights, dtype, device, supported=ARCHITECTURES,
            auto_class=AutoModelForImageTextToText,  # -> Qwen2_5_VLForConditionalGeneration
        )
        # The vision tower's attention is bidirectional: it keeps stock SDPA; only the language
        # model calls the project's causal attention op.
        hf.model.visual.set_attn_implementation("sdpa")
        return cls(hf, tokenizer, source)

    def set_tokenizer(self, tokenizer):
        self.tokenizer = tokenizer

    # -- image and prompt ---------------------------------------------------------------------
    def set_image(self, image, compiled=False):
        """Preprocess a PIL image: pixel_values [n, 3*2*14*14] (float32) and grid_thw [1, 3].

        ``compiled``: first resize to sides that are multiples of the attention window (112 px),
        so that the compiled vision encoder applies."""
        original = image.size
        image = _fetch_image(image)
        if compiled:
            size = self.window_aligned_size(image.size)
            if size != image.size:
                image = image.resize(size, Image.Resampling.BICUBIC)
        out = self.processor(images=[image], return_tensors="pt")
        self.pixel_values, self.grid_thw = out["pixel_values"], out["image_grid_thw"]
        self.num_image_tokens = int(self.grid_thw.prod()) // self.config.vision_config.spatial_merge_size ** 2
        patch = self.config.vision_config.patch_size
        height, width = int(self.grid_thw[0, 1]) * patch, int(self.grid_thw[0, 2]) * patch
        log(f"image {original[0]}x{original[1]} px -> {width}x{height} px, {self.pixel_values.shape[0]} patches, "
            f"{self.num_image_tokens} image tokens")

    @property
    def window_px(self):
        """The side of a vision attention window in pixels (112 for Qwen2.5-VL)."""
        vision = self.config.vision_config
        unit = vision.patch_size * vision.spatial_merge_size
        return vision.window_size // unit * unit

    def window_aligned_size(self, size):
        """(width, height) with both sides multiples of the window, near the processor's own size."""
        p = self.processor
        height, width = smart_resize(size[1], size[0], p.patch_size * p.merge_size, p.size["shortest_edge"],
                                     p.size["longest_edge"])
        step = self.window_px
        aligned = [max(step, round(side / step) * step) for side in (width, height)]
        if aligned[0] * aligned[1] > p.size["longest_edge"]:
            aligned = [max(step, side // step * step) for side in (width, height)]
        return tuple(aligned)

    def prompt_ids(self, question_ids, chat=True):
        """Token ids of one user turn: the image (its pad token repeated once per merged patch),
        then the question, in Qwen2.5-VL's chat format (its template's output for one image)."""
        c = self.config
        image = [c.vision_start_token_id] + [self.image_token_id] * self.num_image_tokens + [c.vision_end_token_id]
        if not chat:
            return image + list(question_ids)
        before = self.encode_text(f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n")
        after = self.encode_text("<|im_end|>\n<|im_start|>assistant\n")
        return before + image + list(question_ids) + after

    def encode_text(self, text):
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def eos_ids(self):
        return models.eos_ids(self.hf.generation_config, self.config, self.text_config, self.tokenizer)

    @property
    def image_token_id(self):
        return self.config.image_token_id

    # -- positions ----------------------------------------------------------------------------
    def positions(self, input_ids):
        """M-RoPE positions (3, B, S) of the prompt, from the model's own ``get_rope_index``;
        remembers each row's rope delta for decode."""
        token_types = (input_ids == self.image_token_id).int()
        grids = self.grid_thw.repeat(input_ids.shape[0], 1).to(input_ids.device)  # one image per row
        position_ids, deltas = self.hf.model.get_rope_index(input_ids, token_types, grids)
        self.rope_deltas = deltas.view(-1).to(input_ids.device)
        return position_ids

    def decode_positions(self, length):
        """Positions of the next token after ``length`` cached ones: (3, B, 1), every axis
        ``length + rope delta``."""
        return (self.rope_deltas + length).view(1, -1, 1).expand(3, -1, 1)

    # -- vision encoder -----------------------------------------------------------------------
    def vision_inputs(self, batch_size, device):
        """Every row's image, [B, n, 3*2*14*14]."""
        return self.pixel_values.to(device)[None].repeat(batch_size, 1, 1)

    def eager_encoder(self):
        """The Hugging Face vision tower: [B, n, C] -> [B, n/4, H] (the images as one packed batch)."""
        visual = self.hf.model.visual

        def encode(pixels):
            images = pixels.shape[0]
            grids = self.grid_thw.repeat(images, 1).to(pixels.device)
            features = visual(pixels.reshape(-1, pixels.shape[-1]).to(visual.dtype), grid_thw=grids).pooler_output
            return features.reshape(images, -1, features.shape[-1])

        return encode

    def static_encoder(self):
        """(StaticVisionEncoder for this grid, None), or (None, why not) where windows are ragged."""
        visual = self.hf.model.visual
        window_index, cu_windows = get_vision_window_index(
            self.grid_thw.cpu(), visual.spatial_merge_size, visual.window_size, visual.patch_size
        )
        sizes = (cu_windows[1:] - cu_windows[:-1]).unique()
        if len(sizes) != 1:
            patch = visual.patch_size
            return None, (f"{int(self.grid_thw[0, 2]) * patch}x{int(self.grid_thw[0, 1]) * patch} px is not a multiple "
                          f"of the {self.window_px} px attention windows; --vision compile resizes to one")
        return StaticVisionEncoder(visual, self.grid_thw, window_index, int(sizes[0])), None

    def to_features(self, encoded, batch_size):
        return encoded

    def embed_tokens(self, ids):
        return self.hf.model.language_model.embed_tokens(ids)

    def embed(self, input_ids, features):
        """Token embeddings with the image features in place of the image pad tokens
        (``masked_scatter``, as the Hugging Face model does)."""
        embeds = self.embed_tokens(input_ids)
        mask = (input_ids == self.image_token_id).unsqueeze(-1)
        return embeds.masked_scatter(mask, features.to(embeds.dtype))

    # -- baselines ----------------------------------------------------------------------------
    def baseline(self, input_ids, pixels):
        """(model, extra generate() inputs) for the Hugging Face baseline. generate() runs the
        vision tower itself, so its TTFT includes it, as ours does."""
        extra = dict(
            pixel_values=pixels.reshape(-1, pixels.shape[-1]),
            image_grid_thw=self.grid_thw.repeat(input_ids.shape[0], 1).to(input_ids.device),
            mm_token_type_ids=(input_ids == self.image_token_id).int(),  # without it, 1-D positions
        )
        return self.hf, lambda: extra


class LanguageModel(nn.Module):
    """The language model alone: ``(inputs_embeds [B,S,H], position_ids [3,B,S])`` -> logits of
    the last position [B,1,V]. Holds only the text weights, so the exported graph does too; it
    also stands for the model in the benchmark's bytes-per-step count."""

    def __init__(self, hf):
        super().__init__()
        self.model = hf.model.language_model
        self.lm_head = hf.lm_head
        self.config = hf.config

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, inputs_embeds, position_ids):
        hidden = self.model(inputs_embeds=inputs_embeds, position_ids=position_ids, use_cache=False).last_hidden_state
        return self.lm_head(hidden[:, -1:])


class StaticVisionEncoder(nn.Module):
    """Qwen2.5-VL's vision tower for one fixed grid with uniform windows:
    ``pixel_values [I, n, C*T*P*P]`` (I images of n patches) -> features ``[I, n/4, H]``.

    The same weights and the same math as the Hugging Face forward, reorganised so that nothing
    depends on data: the window permutation and rotary tables are buffers computed once here,
    window attention is one SDPA over ``[I * windows, heads, window, head_dim]``, and full
    attention one SDPA over ``[I, heads, n, head_dim]``.
    """

    def __init__(self, visual, grid_thw, window_index, window_len):
        super().__init__()
        self.visual = visual
        self.window_len = window_len
        self.merge_unit = visual.spatial_merge_unit
        self.full_blocks = set(visual.fullatt_block_indexes)
        self.num_patches = int(grid_thw.prod())
        grid = grid_thw.cpu()
        device = visual.patch_embed.proj.weight.device
        with torch.no_grad():
            position_ids = get_vision_position_ids(grid, visual.spatial_merge_size).to(device)
            cos, sin = visual.rotary_pos_emb(torch.empty(0, device=device), position_ids)

        def order(t):
            return t.reshape(-1, self.merge_unit, t.shape[-1])[window_index.to(device)].reshape(t.shape)

        # Rotary tables stay in float32 (the eager path computes them in float32 too).
        self.register_buffer("cos", order(cos).float(), persistent=False)
        self.register_buffer("sin", order(sin).float(), persistent=False)
        self.register_buffer("window_index", window_index.to(device), persistent=False)
        self.register_buffer("reverse_index", torch.argsort(window_index).to(device), persistent=False)

    def forward(self, pixel_values):
        images, n = pixel_values.shape[0], self.num_patches
        x = self.visual.patch_embed(pixel_values.reshape(images * n, -1))
        x = x.reshape(images, n // self.merge_unit, self.merge_unit, -1)[:, self.window_index].reshape(images, n, -1)
        for i, block in enumerate(self.visual.blocks):
            x = x + self._attention(block.attn, block.norm1(x), n if i in self.full_blocks else self.window_len)
            x = x + block.mlp(block.norm2(x))
        merged = self.visual.merger(x.reshape(images * n, -1))
        return merged.reshape(images, n // self.merge_unit, -1)[:, self.reverse_index]

    def _attention(self, attn, x, span):
        """Bidirectional attention within consecutive groups of ``span`` patches (a window, or
        a whole image)."""
        images, n, dim = x.shape
        q, k, v = attn.qkv(x).reshape(images, n, 3, attn.num_heads, -1).permute(2, 0, 1, 3, 4).unbind(0)
        q, k = apply_rotary_pos_emb_vision(q, k, self.cos, self.sin)

        def groups(t):
            return t.reshape(images * n // span, span, attn.num_heads, -1).transpose(1, 2)

        out = F.scaled_dot_product_attention(groups(q), groups(k), groups(v), scale=attn.scaling)
        return attn.proj(out.transpose(1, 2).reshape(images, n, dim))

