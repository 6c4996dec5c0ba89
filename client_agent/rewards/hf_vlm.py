"""``hf-vlm``: a local Hugging Face vision-language checkpoint with a scalar head.

It reads image + question + answer the way the VLM itself does (its own processor resizes
the image and expands the image placeholder), and scores the last attended token's hidden
state with a new ``nn.Linear(hidden, 1)``. LoRA adapters go on the language model's
query/value projections only; the vision tower and projector stay frozen.

DP layout: pixel values are per *prompt* (``[B, C, H, W]``, shared by both answers) and the
token ids per answer (``[B, K, L]``), so one DP sample is still one pair. Families whose
processor flattens all images into one patch sequence (Qwen2-VL's ``image_grid_thw``) have
no per-sample first dimension and are refused with that reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import nn

from client_agent.errors import RewardModelError
from client_agent.rewards.base import RewardModel, question_response_pairs, responses_per_prompt
from client_agent.rewards.hf_common import (
    BASE_DIR,
    apply_lora,
    from_saved_config,
    last_token,
    load_pretrained,
    lora_targets,
    parse_targets,
)


class HFVLMReward(RewardModel):
    """LoRA-adapted VLM + scalar head over (image, question, answer)."""

    arch: ClassVar[str] = "hf-vlm"

    def __init__(self, model: Any, processor: Any, *, lora_r: int = 8, lora_alpha: int = 16,
                 target_modules: str = "", seed: int = 0, base: str = "") -> None:
        super().__init__()
        self._cfg: dict[str, Any] = {"lora_r": lora_r, "lora_alpha": lora_alpha, "target_modules": target_modules,
                                     "seed": seed, "base": base}
        self.processor = processor
        tokenizer = getattr(processor, "tokenizer", None)
        if tokenizer is None or getattr(processor, "image_processor", None) is None:
            raise RewardModelError("hf-vlm needs a processor with a tokenizer and an image processor "
                                   "(AutoProcessor of the checkpoint)")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.image_token = getattr(processor, "image_token", None) or "<image>"
        text_config = model.config.get_text_config()
        targets = lora_targets(model, within="language_model", names=parse_targets(target_modules))
        self.model = apply_lora(model, targets, r=lora_r, alpha=lora_alpha, seed=seed)
        gen = torch.Generator().manual_seed(seed)
        self.head = nn.Linear(int(text_config.hidden_size), 1)
        with torch.no_grad():
            self.head.weight.normal_(0.0, 1.0 / self.head.in_features**0.5, generator=gen)
            self.head.bias.zero_()

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> HFVLMReward:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        processor = load_pretrained(AutoProcessor, path, "processor")
        model = load_pretrained(AutoModelForImageTextToText, path, "vision-language model")
        return cls(model, processor, base=str(path), **kwargs)

    def config(self) -> dict[str, Any]:
        return dict(self._cfg)

    def _save_extra(self, directory: Path) -> None:
        self.model.get_base_model().config.save_pretrained(str(directory / BASE_DIR))
        self.processor.save_pretrained(str(directory / BASE_DIR))

    @classmethod
    def _from_manifest(cls, directory: Path, config: dict[str, Any]) -> RewardModel:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        processor = load_pretrained(AutoProcessor, directory / BASE_DIR, "processor")
        return cls(from_saved_config(AutoModelForImageTextToText, directory), processor, **config)

    def trainable_parameter_names(self) -> list[str]:
        return [n for n, _ in self.named_parameters() if "lora_" in n or n.startswith("head.")]

    def featurize_responses(
        self, images: Sequence[Image.Image], questions: Sequence[str], responses: Sequence[Sequence[str]]
    ) -> tuple[torch.Tensor, ...]:
        k = responses_per_prompt(responses)
        qs, rs = question_response_pairs(questions, responses)
        texts = [f"{self.image_token}\n{q}\n{r}" for q, r in zip(qs, rs, strict=True)]
        repeated = [img.convert("RGB") for img in images for _ in range(k)]
        enc = self.processor(text=texts, images=repeated, padding=True, return_tensors="pt")
        pixels = enc.get("pixel_values")
        if pixels is None or pixels.shape[0] != len(texts) or "image_grid_thw" in enc:
            raise RewardModelError(f"hf-vlm: {type(self.processor).__name__} does not give one pixel tensor per "
                                   "image (batch-first), so DP samples cannot be separated; use a LLaVA-style model")
        shape = (len(responses), k, -1)
        pixels = pixels.reshape(len(responses), k, *pixels.shape[1:])[:, 0].contiguous()
        return pixels, enc["input_ids"].reshape(shape), enc["attention_mask"].reshape(shape)

    def forward(self, pixels: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        base: Any = self.model.get_base_model()
        backbone = getattr(base, "model", base)  # e.g. LlavaModel: hidden states without the vocabulary head
        scores = []
        for j in range(ids.shape[1]):
            out = backbone(input_ids=ids[:, j], attention_mask=mask[:, j],
                           pixel_values=pixels.to(self.head.weight.dtype))
            hidden = out.last_hidden_state if getattr(out, "last_hidden_state", None) is not None else out[0]
            scores.append(self.head(last_token(hidden, mask[:, j])).squeeze(-1))
        return torch.stack(scores, dim=1)
