"""Build a small vision-language model offline, saved as an ordinary HF checkpoint.

Why build instead of download: the embedded demo runs with no network and no GPU, and no
small VLM ships in a PyPI package. We assemble a LLaVA (tiny CLIP vision tower + projector
+ tiny Qwen2 text model) with random weights and a tokenizer trained here, then save it
with ``save_pretrained`` so every later step goes through the same code path as a real
checkpoint (``AutoProcessor`` / ``AutoModelForImageTextToText`` from a local path).

Tiny instances of other families (Qwen2-VL, Qwen2.5-VL, Idefics3) are in :mod:`server.vlm.tiny`.
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
)

from server.errors import VLMBuildError
from server.vlm.tokenizer import (
    IM_END,
    LLAVA_IMAGE,
    packaged_texts,
    token_id,
    train_tokenizer,
)

IMAGE_SIZE = 64


@dataclass(frozen=True)
class SmallVLMSpec:
    """Sizes of the offline LLaVA; the defaults give 1.04M parameters (tied embeddings, the packaged
    corpus's BPE stops at 859 tokens), 64 image tokens."""

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


def _set_generation_ids(model: Any, tokenizer: Any) -> None:
    """Generation stops at the end-of-turn token and pads with the pad token."""
    gen = model.generation_config
    gen.eos_token_id = token_id(tokenizer, IM_END)
    gen.pad_token_id = tokenizer.pad_token_id
    gen.bos_token_id = tokenizer.bos_token_id
