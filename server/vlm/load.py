"""Load any Hugging Face VLM checkpoint from a local path: the one door every caller uses.

Why one function: the small offline LLaVA, a tiny Qwen2-VL and a real multi-GB checkpoint on
a GPU machine must all go through the same code path, so the demo exercises what production
runs. ``AutoProcessor`` covers most families; Qwen2-VL saved without a video processor
(no torchvision here) makes ``AutoProcessor`` return only the tokenizer, which we detect and
answer with the image-only subclass instead of failing later with a confusing error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, ProcessorMixin

from server.errors import VLMLoadError
from server.vlm.families import read_model_type
from server.vlm.processors import Qwen2_5_VLImageOnlyProcessor, Qwen2VLImageOnlyProcessor

_IMAGE_ONLY_FALLBACK: dict[str, type[ProcessorMixin]] = {
    "qwen2_vl": Qwen2VLImageOnlyProcessor,
    "qwen2_5_vl": Qwen2_5_VLImageOnlyProcessor,
}


@dataclass(frozen=True)
class LoadedVLM:
    """A model in eval mode with its processor (left padding), and where they came from."""

    model: Any
    processor: Any
    path: Path


def default_device() -> str:
    """The GPU when one is present, else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_processor(path: Path) -> Any:
    """The checkpoint's processor, with left padding for batched generation."""
    path = Path(path)
    model_type = read_model_type(path)
    try:
        processor = AutoProcessor.from_pretrained(path)
        if not hasattr(processor, "image_processor") and model_type in _IMAGE_ONLY_FALLBACK:
            processor = _IMAGE_ONLY_FALLBACK[model_type].from_pretrained(path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise VLMLoadError(f"{path}: cannot load processor: {exc}") from None
    if not hasattr(processor, "image_processor"):
        raise VLMLoadError(f"{path}: processor has no image processor (model_type {model_type!r} is not a VLM?)")
    processor.tokenizer.padding_side = "left"
    if processor.tokenizer.pad_token is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    return processor


def load_vlm(path: Path, *, device: str | None = None, dtype: torch.dtype | None = None,
             attn_implementation: str | None = None) -> LoadedVLM:
    """Load model (eval mode, on ``device``) and processor from a local checkpoint directory.

    ``attn_implementation`` (``eager``, ``sdpa``, ``flash_attention_2``...) defaults to transformers' choice.
    """
    path = Path(path)
    if not path.is_dir():
        raise VLMLoadError(f"{path}: no such checkpoint directory")
    model_type = read_model_type(path)
    processor = load_processor(path)
    try:
        extra = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
        model: Any = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype or torch.float32, **extra)
    except (OSError, ValueError, KeyError, ImportError) as exc:
        raise VLMLoadError(f"{path}: cannot load model_type {model_type!r} as an image-text model: {exc}") from None
    model.to(device or default_device())
    model.eval()
    return LoadedVLM(model=model, processor=processor, path=path)
