"""Small Hugging Face checkpoints built here, offline, for the ``hf-text`` and ``hf-vlm`` reward models.

The benchmark needs *a* checkpoint of each family a member may bring, not a good one: the cost
of a DP step depends on the shapes, not on the weights. Each is made with its real config class
and ``save_pretrained`` (randomly initialised, seeded) into a folder of the caller's, and loaded
back through the same :func:`client_agent.rewards.registry.build_reward_model` an agent uses:

* ``hf-text``: a Llama decoder (``LlamaForCausalLM``; ``AutoModelForSequenceClassification`` adds
  the score head), 4 layers of width 256 — the shape of a small domain LM, ~1/40 of SmolLM2-135M.
* ``hf-vlm``: a LLaVA (CLIP vision tower + Qwen2 language model, 4 layers of width 256) whose
  processor gives one pixel tensor per image, the family ``hf-vlm`` accepts.

The tokenizer is the WordPiece vocabulary that ships with the bundled MiniLM (no download).
``smoke=True`` halves depth and width so the test suite's run takes seconds; ``size="tiny"`` is
the smaller still pair the unit tests train under DP.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def wordpiece_tokenizer(extra: list[str] | None = None) -> Any:
    """The bundled MiniLM's WordPiece tokenizer, with ``extra`` special tokens (e.g. an image placeholder)."""
    from transformers import AutoTokenizer

    from embed.encoders import default_text_model_path

    tok = AutoTokenizer.from_pretrained(str(default_text_model_path()), local_files_only=True)
    if extra:  # an image placeholder must be a special token, or WordPiece splits it
        tok.add_special_tokens({"additional_special_tokens": extra})
    return tok


# Per size: text (hidden, intermediate, layers, positions), vision (hidden, layers, image side, patch).
# "tiny" is what unit tests train under DP in seconds; "smoke" the bench's quick run; "bench" its figures.
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"text": (32, 64, 2), "positions": 128, "vision": (32, 1, 32, 8)},
    "smoke": {"text": (128, 256, 2), "positions": 256, "vision": (64, 2, 64, 16)},
    "bench": {"text": (256, 768, 4), "positions": 256, "vision": (64, 2, 64, 16)},
}


def _preset(size: str | None, smoke: bool) -> dict[str, Any]:
    name = size or ("smoke" if smoke else "bench")
    if name not in SIZES:
        raise ValueError(f"checkpoint size {name!r}: choose one of {', '.join(SIZES)}")
    return SIZES[name]


def _text_dims(preset: dict[str, Any]) -> dict[str, Any]:
    hidden, intermediate, layers = preset["text"]
    return {"hidden_size": hidden, "intermediate_size": intermediate, "num_hidden_layers": layers,
            "num_attention_heads": 4, "num_key_value_heads": 2}


def build_text_checkpoint(path: Path, *, smoke: bool = False, seed: int = 0, size: str | None = None) -> Path:
    """A decoder LM checkpoint in ``path`` for ``hf-text``; returns ``path``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    preset = _preset(size, smoke)
    tok = wordpiece_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), max_position_embeddings=preset["positions"],
                         pad_token_id=tok.pad_token_id, **_text_dims(preset))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        LlamaForCausalLM(config).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


def build_vlm_checkpoint(path: Path, *, smoke: bool = False, seed: int = 0, size: str | None = None) -> Path:
    """A LLaVA checkpoint (CLIP vision + Qwen2 text) and its processor in ``path`` for ``hf-vlm``."""
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        Qwen2Config,
    )

    preset = _preset(size, smoke)
    tok = wordpiece_tokenizer(["<image>"])
    width, depth, side, patch = preset["vision"]  # (side / patch)^2 image tokens (+1 CLS the processor counts)
    vision = CLIPVisionConfig(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=depth,
                              num_attention_heads=2, image_size=side, patch_size=patch, projection_dim=width)
    text = Qwen2Config(vocab_size=len(tok), max_position_embeddings=2 * preset["positions"],
                       pad_token_id=tok.pad_token_id, **_text_dims(preset))
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids("<image>"),
                         vision_feature_select_strategy="default", vision_feature_layer=-1)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        LlavaForConditionalGeneration(config).save_pretrained(str(path))
    processor = LlavaProcessor(image_processor=CLIPImageProcessorPil(size={"shortest_edge": side},
                                                                     crop_size={"height": side, "width": side}),
                               tokenizer=tok, patch_size=patch, vision_feature_select_strategy="default",
                               num_additional_image_tokens=1)
    processor.save_pretrained(str(path))
    return path
