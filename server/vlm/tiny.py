"""Tiny random instances of more real VLM families, saved as ordinary HF checkpoints.

Why: "any Hugging Face VLM from a local path" is only a promise until each family's own
config class, processor and model class has gone through the same load -> GRPO path as a
production checkpoint. These builders make checkpoints of a few hundred thousand
parameters (a fraction of a second to build, about a second per GRPO step on a CPU) of:

- Qwen2-VL: ``mrope_section`` must sum to ``head_dim / 2`` and the vision ``hidden_size`` must
  equal the text hidden size.
- Qwen2.5-VL: the same rope rule; the vision tower has its own width and ``out_hidden_size``
  (the merger's output) equal to the text width; windowed attention needs ``window_size`` to be
  a multiple of the merged patch size.
- Idefics3 (the architecture of SmolVLM): a SigLIP-style tower, a pixel-shuffle connector
  (``scale_factor``) and a Llama text model; the processor inserts
  ``image_seq_len = (image_size / patch_size)^2 / scale_factor^2`` image tokens per image, and
  image splitting is switched off so one image is one tile.

The small LLaVA (the toy default) is built by :mod:`server.vlm.build`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from transformers import (
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessorPil,
    Idefics3Processor,
    LlamaConfig,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
)

from server.errors import VLMBuildError
from server.vlm.build import IMAGE_SIZE, _prepare_dir, _set_generation_ids
from server.vlm.processors import Qwen2_5_VLImageOnlyProcessor, Qwen2VLImageOnlyProcessor
from server.vlm.tokenizer import (
    IDEFICS_IMAGE,
    IM_END,
    QWEN_IMAGE,
    QWEN_VIDEO,
    QWEN_VISION_END,
    QWEN_VISION_START,
    packaged_texts,
    token_id,
    train_tokenizer,
)

QWEN_TEXT_HIDDEN = 64


def _build_tiny_qwen(out_dir: Path, *, seed: int, texts: Iterable[str] | None, vision: dict[str, Any],
                     config_class: Any, model_class: Any, processor_class: Any) -> Path:
    """Shared by the Qwen2-VL and Qwen2.5-VL builders: same tokenizer, text model and image processor."""
    out_dir = _prepare_dir(out_dir)
    tokenizer = train_tokenizer(texts if texts is not None else packaged_texts(), style="qwen2_vl", vocab_size=1024)
    hidden, heads = QWEN_TEXT_HIDDEN, 4
    section = [2, 3, 3]
    if sum(section) * 2 != hidden // heads:
        raise VLMBuildError("mrope_section must sum to head_dim / 2")
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden,
        "intermediate_size": hidden * 3,
        "num_hidden_layers": 2,
        "num_attention_heads": heads,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        "rope_parameters": {"rope_type": "default", "mrope_section": section, "rope_theta": 10000.0},
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": token_id(tokenizer, IM_END),
        "pad_token_id": tokenizer.pad_token_id,
    }
    config = config_class(
        text_config=text,
        vision_config=vision,
        image_token_id=token_id(tokenizer, QWEN_IMAGE),
        video_token_id=token_id(tokenizer, QWEN_VIDEO),
        vision_start_token_id=token_id(tokenizer, QWEN_VISION_START),
        vision_end_token_id=token_id(tokenizer, QWEN_VISION_END),
    )
    torch.manual_seed(seed)
    model = model_class(config)
    _set_generation_ids(model, tokenizer)
    pixels = IMAGE_SIZE * IMAGE_SIZE
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=8, merge_size=2, temporal_patch_size=2, size={"shortest_edge": pixels, "longest_edge": pixels}
    )
    processor = processor_class(image_processor=image_processor, tokenizer=tokenizer,
                                chat_template=tokenizer.chat_template)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def build_tiny_qwen2_vl(out_dir: Path, *, seed: int = 0, texts: Iterable[str] | None = None) -> Path:
    """A tiny Qwen2-VL (16 image tokens for a 64x64 image) saved into ``out_dir``."""
    vision = {"depth": 2, "embed_dim": 32, "hidden_size": QWEN_TEXT_HIDDEN,  # must equal the text hidden size
              "num_heads": 2, "patch_size": 8, "spatial_merge_size": 2, "temporal_patch_size": 2}
    return _build_tiny_qwen(out_dir, seed=seed, texts=texts, vision=vision, config_class=Qwen2VLConfig,
                            model_class=Qwen2VLForConditionalGeneration, processor_class=Qwen2VLImageOnlyProcessor)


def build_tiny_qwen2_5_vl(out_dir: Path, *, seed: int = 0, texts: Iterable[str] | None = None) -> Path:
    """A tiny Qwen2.5-VL (16 image tokens for a 64x64 image) saved into ``out_dir``."""
    vision = {
        "depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
        "out_hidden_size": QWEN_TEXT_HIDDEN,  # the merger's output feeds the text model
        "patch_size": 8, "spatial_merge_size": 2, "temporal_patch_size": 2,
        "window_size": 32,  # a multiple of patch_size * spatial_merge_size
        "fullatt_block_indexes": [1],
    }
    return _build_tiny_qwen(out_dir, seed=seed, texts=texts, vision=vision, config_class=Qwen2_5_VLConfig,
                            model_class=Qwen2_5_VLForConditionalGeneration,
                            processor_class=Qwen2_5_VLImageOnlyProcessor)


def build_tiny_idefics3(
    out_dir: Path, *, seed: int = 0, texts: Iterable[str] | None = None, image_size: int = IMAGE_SIZE
) -> Path:
    """A tiny Idefics3 / SmolVLM-style model (16 image tokens per image) saved into ``out_dir``."""
    out_dir = _prepare_dir(out_dir)
    tokenizer = train_tokenizer(texts if texts is not None else packaged_texts(), style="idefics3", vocab_size=1024)
    patch, scale = 8, 2
    image_seq_len = (image_size // patch) ** 2 // scale**2
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=token_id(tokenizer, IM_END),
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": image_size,
        "patch_size": patch,
    }
    config = Idefics3Config(
        text_config=text.to_dict(),
        vision_config=vision,
        image_token_id=token_id(tokenizer, IDEFICS_IMAGE),
        scale_factor=scale,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config)
    _set_generation_ids(model, tokenizer)
    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=False,
        size={"longest_edge": image_size},
        max_image_size={"longest_edge": image_size},
    )
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=image_seq_len,
        chat_template=tokenizer.chat_template,
    )
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
