"""Build a small vision-language model offline, saved as an ordinary HF checkpoint.

Why build instead of download: the embedded demo runs with no network and no GPU, and no
small VLM ships in a PyPI package. We assemble a LLaVA (tiny CLIP vision tower + projector
+ tiny Qwen2 text model) with random weights and a tokenizer trained here, then save it
with ``save_pretrained`` so every later step goes through the same code path as a real
checkpoint (``AutoProcessor`` / ``AutoModelForImageTextToText`` from a local path).

A tiny Qwen2-VL builder exists so the "any HF VLM from a local path" promise is tested on a
second architecture family, with its two traps handled: ``mrope_section`` must sum to
``head_dim / 2`` and the vision ``hidden_size`` must equal the text hidden size.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    Qwen2Config,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
)

from server.errors import VLMBuildError
from server.vlm.processors import Qwen2VLImageOnlyProcessor
from server.vlm.tokenizer import (
    IM_END,
    LLAVA_IMAGE,
    QWEN_IMAGE,
    QWEN_VIDEO,
    QWEN_VISION_END,
    QWEN_VISION_START,
    packaged_texts,
    token_id,
    train_tokenizer,
)

IMAGE_SIZE = 64


@dataclass(frozen=True)
class SmallVLMSpec:
    """Sizes of the offline LLaVA; the defaults give ~1.6M parameters, 64 image tokens."""

    vocab_size: int = 2048
    text_hidden: int = 128
    text_layers: int = 4
    text_heads: int = 4
    text_kv_heads: int = 2
    vision_hidden: int = 64
    vision_layers: int = 2
    vision_heads: int = 4
    patch_size: int = 8


def _corpus_texts() -> list[str]:
    """Questions and good answers of the project corpus, so BPE merges fit what we generate."""
    from corpus.builders import build_sft_examples

    texts: list[str] = []
    for prompt, answer in build_sft_examples(600, seed=0):
        texts.extend((prompt.question, answer))
    return texts


def _prepare_dir(out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise VLMBuildError(f"{out_dir}: refusing to build into a non-empty directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def build_small_vlm(
    out_dir: Path, *, seed: int = 0, spec: SmallVLMSpec | None = None, texts: Iterable[str] | None = None
) -> Path:
    """Build the offline LLaVA into ``out_dir`` (must be empty or absent) and return the path.

    ``texts`` defaults to packaged easy-vqa text plus the corpus' questions and answers.
    """
    spec = spec or SmallVLMSpec()
    out_dir = _prepare_dir(out_dir)
    corpus = list(texts) if texts is not None else packaged_texts() + _corpus_texts()
    tokenizer = train_tokenizer(corpus, style="llava", vocab_size=spec.vocab_size)
    image_token_id = token_id(tokenizer, LLAVA_IMAGE)
    vision = CLIPVisionConfig(
        hidden_size=spec.vision_hidden,
        intermediate_size=spec.vision_hidden * 4,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=spec.vision_heads,
        image_size=IMAGE_SIZE,
        patch_size=spec.patch_size,
        projection_dim=spec.vision_hidden,
    )
    text = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=spec.text_hidden,
        intermediate_size=spec.text_hidden * 3,
        num_hidden_layers=spec.text_layers,
        num_attention_heads=spec.text_heads,
        num_key_value_heads=spec.text_kv_heads,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=token_id(tokenizer, IM_END),
        pad_token_id=tokenizer.pad_token_id,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image_token_id,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    _set_generation_ids(model, tokenizer)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=spec.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=tokenizer.chat_template,
    )
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def build_tiny_qwen2_vl(out_dir: Path, *, seed: int = 0, texts: Iterable[str] | None = None) -> Path:
    """Build a tiny Qwen2-VL checkpoint (16 image tokens for 64x64) into ``out_dir``."""
    out_dir = _prepare_dir(out_dir)
    tokenizer = train_tokenizer(texts if texts is not None else packaged_texts(), style="qwen2_vl", vocab_size=1024)
    hidden, heads = 64, 4
    head_dim = hidden // heads  # mrope_section must sum to head_dim / 2
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden,
        "intermediate_size": hidden * 3,
        "num_hidden_layers": 2,
        "num_attention_heads": heads,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": token_id(tokenizer, IM_END),
        "pad_token_id": tokenizer.pad_token_id,
    }
    if sum(text["rope_parameters"]["mrope_section"]) * 2 != head_dim:  # type: ignore[index]
        raise VLMBuildError("mrope_section must sum to head_dim / 2")
    vision = {
        "depth": 2,
        "embed_dim": 32,
        "hidden_size": hidden,  # must equal the text hidden size
        "num_heads": 2,
        "patch_size": 8,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    config = Qwen2VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=token_id(tokenizer, QWEN_IMAGE),
        video_token_id=token_id(tokenizer, QWEN_VIDEO),
        vision_start_token_id=token_id(tokenizer, QWEN_VISION_START),
        vision_end_token_id=token_id(tokenizer, QWEN_VISION_END),
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    _set_generation_ids(model, tokenizer)
    pixels = IMAGE_SIZE * IMAGE_SIZE
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=8, merge_size=2, temporal_patch_size=2, size={"shortest_edge": pixels, "longest_edge": pixels}
    )
    processor = Qwen2VLImageOnlyProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=tokenizer.chat_template
    )
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def _set_generation_ids(model: Any, tokenizer: Any) -> None:
    """Generation stops at the end-of-turn token and pads with the pad token."""
    gen = model.generation_config
    gen.eos_token_id = token_id(tokenizer, IM_END)
    gen.pad_token_id = tokenizer.pad_token_id
    gen.bos_token_id = tokenizer.bos_token_id
