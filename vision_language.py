"""What run_vlm.py asks of a vision-language family: the ``VisionLanguageModel`` interface, and
the families that implement it (``qwen_vl.QwenVL``, ``eagle2.Eagle2VL``) by config model type."""

from collections.abc import Callable
from typing import Any, Protocol

import torch
from PIL import Image
from torch import nn
from transformers import PreTrainedConfig

import eagle2
import qwen_vl
from utils import UserError


class VisionLanguageModel(Protocol):
    """One loaded model of a family and one image at a time: ``set_image`` preprocesses it, and
    the calls that follow (prompt, positions, vision encoder, embeddings) are about that image."""

    name: str
    """The family's name in log lines."""
    default_vision: str
    """The vision encoder that ``--vision auto`` picks: "eager" or "compile"."""
    position_seq_dim: int
    """The sequence dim of ``position_ids``: 1 for text positions [B, S], 2 for M-RoPE [3, B, S]."""
    text_config: PreTrainedConfig
    """The language model's config."""
    lm_module: nn.Module
    """What is exported: ``(inputs_embeds [B, S, H], position_ids)`` -> logits of the last position [B, 1, V]."""
    text_model: nn.Module
    """The language model's weights, which the benchmark counts as a decode step's reads."""
    tokenizer: Any
    """The tokenizer, or None where none is available offline."""
    source: str
    """The folder or hub id the model came from."""
    num_image_tokens: int
    """How many image tokens the prompt holds for the image (``set_image``)."""
    pixel_values: torch.Tensor | None
    """The preprocessed image (``set_image``), on the CPU."""

    @classmethod
    def load(cls, model: str, random_weights: bool, dtype: torch.dtype, device: torch.device,
             max_tiles: int | None = None) -> "VisionLanguageModel":
        """The model (hub id or folder; random weights from its config) and its tokenizer, on ``device``."""

    def set_tokenizer(self, tokenizer) -> None:
        """Use this tokenizer (``--tokenizer``) instead of the model's own."""

    def set_image(self, image: Image.Image, compiled: bool = False) -> None:
        """Preprocess a PIL image; ``compiled``: at a size the compiled vision encoder takes."""

    def prompt_ids(self, question_ids: list[int], chat: bool = True) -> list[int]:
        """Token ids of one user turn: the image's tokens, then the question, in the chat format if ``chat``."""

    def encode_text(self, text: str) -> list[int]:
        """Token ids of ``text``, no special tokens added."""

    def eos_ids(self) -> list[int]:
        """The token ids that end an answer."""

    @property
    def image_token_id(self) -> int:
        """The prompt token that each image feature replaces."""

    def positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Position ids of the prompt, [B, S] or M-RoPE's [3, B, S]; remembers what decode needs."""

    def decode_positions(self, length: int) -> torch.Tensor:
        """Position ids of the next token after ``length`` cached ones (sequence length 1)."""

    def vision_inputs(self, batch_size: int, device: torch.device) -> torch.Tensor:
        """Every row's image as the vision encoder takes it."""

    def eager_encoder(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The model's own vision encoder (any image size), on ``vision_inputs``."""

    def static_encoder(self) -> tuple[nn.Module | None, str | None]:
        """(a module to export for this image's shape, None), or (None, why there is none)."""

    def to_features(self, encoded: torch.Tensor, batch_size: int) -> torch.Tensor:
        """An encoder's output as image features [B, image tokens, H]."""

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings [B, S, H] of ids [B, S]."""

    def embed(self, input_ids: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """The prompt's embeddings, the image features in place of the image tokens."""

    def baseline(self, input_ids: torch.Tensor, pixels: torch.Tensor) -> tuple[nn.Module, Callable[[], dict]]:
        """(Hugging Face model, extra generate() inputs made inside the timed region) for the baseline."""


FAMILIES: dict[str, type[VisionLanguageModel]] = {
    "qwen2_5_vl": qwen_vl.QwenVL,
    eagle2.Eagle2Config.model_type: eagle2.Eagle2VL,
}


def model_family(config) -> type[VisionLanguageModel]:
    """The family of a model config, or one UserError line."""
    family = FAMILIES.get(config.model_type)
    if family is None:
        raise UserError(
            f"--model: {config.model_type!r} is not a vision-language model run_vlm.py supports "
            "(Qwen2.5-VL, Eagle2; use run_llm.py for text models)"
        )
    return family
