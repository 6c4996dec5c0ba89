"""``hf-text``: any local Hugging Face ``AutoModelForSequenceClassification`` checkpoint as a reward model.

It scores the question and the answer as a text pair (the image is not seen: a text-only
judge of answers, e.g. a domain language model). ``num_labels = 1`` gives the scalar head
(newly initialised, trained with the LoRA adapters); decoder families read the score at the
last non-pad token, which needs a pad token — a tokenizer without one gets its EOS token.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import nn

from client_agent.rewards.base import RewardModel, question_response_pairs, responses_per_prompt
from client_agent.rewards.hf_common import (
    BASE_DIR,
    apply_lora,
    from_saved_config,
    load_pretrained,
    lora_targets,
    parse_targets,
)

HEADS = ("score", "classifier")


class HFTextReward(RewardModel):
    """LoRA-adapted sequence classifier over ``question [SEP] answer``."""

    arch: ClassVar[str] = "hf-text"

    def __init__(self, model: Any, tokenizer: Any, *, lora_r: int = 8, lora_alpha: int = 16,
                 max_len: int = 128, target_modules: str = "", seed: int = 0, base: str = "") -> None:
        super().__init__()
        self._cfg: dict[str, Any] = {"lora_r": lora_r, "lora_alpha": lora_alpha, "max_len": max_len,
                                     "target_modules": target_modules, "seed": seed, "base": base}
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        model.config.pad_token_id = tokenizer.pad_token_id
        self.tokenizer = tokenizer
        heads = [h for h in HEADS if isinstance(getattr(model, h, None), nn.Module)]
        if not heads:
            raise_no_head(model)
        self._head = heads[0]
        targets = lora_targets(model, names=parse_targets(target_modules))
        targets = [t for t in targets if not t.startswith(self._head)]
        self.model = apply_lora(model, targets, r=lora_r, alpha=lora_alpha, seed=seed)
        getattr(self.model.get_base_model(), self._head).requires_grad_(True)

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> HFTextReward:
        """Load the checkpoint at ``path`` with a fresh one-output head (seeded by ``seed``)."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        tokenizer = load_pretrained(AutoTokenizer, path, "tokenizer")
        with torch.random.fork_rng():
            torch.manual_seed(int(kwargs.get("seed", 0)))
            model = load_pretrained(AutoModelForSequenceClassification, path, "sequence classifier", num_labels=1)
        return cls(model, tokenizer, base=str(path), **kwargs)

    def config(self) -> dict[str, Any]:
        return dict(self._cfg)

    def _save_extra(self, directory: Path) -> None:
        self.model.get_base_model().config.save_pretrained(str(directory / BASE_DIR))
        self.tokenizer.save_pretrained(str(directory / BASE_DIR))

    @classmethod
    def _from_manifest(cls, directory: Path, config: dict[str, Any]) -> RewardModel:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        tokenizer = load_pretrained(AutoTokenizer, directory / BASE_DIR, "tokenizer")
        return cls(from_saved_config(AutoModelForSequenceClassification, directory), tokenizer, **config)

    def trainable_parameter_names(self) -> list[str]:
        head = f"model.base_model.model.{self._head}."
        return [n for n, _ in self.named_parameters() if "lora_" in n or n.startswith(head)]

    def featurize_responses(
        self, images: Sequence[Image.Image], questions: Sequence[str], responses: Sequence[Sequence[str]]
    ) -> tuple[torch.Tensor, ...]:
        k = responses_per_prompt(responses)
        qs, rs = question_response_pairs(questions, responses)
        enc = self.tokenizer(qs, rs, truncation=True, max_length=self._cfg["max_len"], padding="max_length",
                             return_tensors="pt")
        shape = (len(responses), k, -1)
        return enc["input_ids"].reshape(shape), enc["attention_mask"].reshape(shape)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = [self.model(input_ids=ids[:, j], attention_mask=mask[:, j]).logits[:, 0] for j in range(ids.shape[1])]
        return torch.stack(scores, dim=1)


def raise_no_head(model: nn.Module) -> None:
    from client_agent.errors import RewardModelError

    raise RewardModelError(f"{type(model).__name__} has no scalar head ({' or '.join(HEADS)}); "
                           "use a checkpoint AutoModelForSequenceClassification can load")
