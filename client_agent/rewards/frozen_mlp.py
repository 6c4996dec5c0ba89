"""Architecture 1: frozen pretrained encoders + a small trainable MLP head.

The image (EfficientNet-lite0) and the question and response (MiniLM) are embedded by
frozen encoders that ship in PyPI packages; only the head sees gradients, so DP-SGD is
cheap (features are computed once and cached) and ghost clipping applies (Linear layers
only). The head sees [image, question, response, question⊙response] so that it can judge a
response *relative to* what was asked about which picture.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from PIL import Image
from torch import nn

from client_agent.rewards.base import RewardModel, responses_per_prompt
from client_agent.rewards.features import FeatureCache, shared_feature_cache


class FrozenMLPReward(RewardModel):
    """``score = MLP([img, q, r, q*r])`` over frozen EfficientNet-lite0 + MiniLM features."""

    arch: ClassVar[str] = "frozen-mlp"
    # two Linear layers on [B, K=2, features]: ghost norms cost B*K^2*(in+out), per-pair gradients B*in*out;
    # book-keeping also skips the second backward pass (client_agent.dp.bookkeeping)
    dp_clipping: ClassVar[Literal["flat", "ghost", "bk"]] = "bk"

    def __init__(
        self,
        *,
        hidden: int = 128,
        text_model_path: str | None = None,
        image_dim: int = 1280,
        text_dim: int = 384,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self._cfg: dict[str, Any] = {
            "hidden": hidden, "text_model_path": text_model_path,
            "image_dim": image_dim, "text_dim": text_dim, "seed": seed,
        }
        self._cache: FeatureCache | None = None
        gen = torch.Generator().manual_seed(seed)
        self.fc1 = nn.Linear(image_dim + 3 * text_dim, hidden)
        self.fc2 = nn.Linear(hidden, 1)
        with torch.no_grad():
            for layer in (self.fc1, self.fc2):
                bound = 1.0 / layer.in_features**0.5
                layer.weight.uniform_(-bound, bound, generator=gen)
                layer.bias.zero_()
        self.act = nn.ReLU()

    @classmethod
    def from_pretrained(cls, text_model_path: str | Path, **kwargs: Any) -> FrozenMLPReward:
        """Use any local Hugging Face text-encoder checkpoint instead of the bundled MiniLM."""
        from transformers import AutoConfig

        text_dim = int(AutoConfig.from_pretrained(str(text_model_path), local_files_only=True).hidden_size)
        return cls(text_model_path=str(text_model_path), text_dim=text_dim, **kwargs)

    def config(self) -> dict[str, Any]:
        return dict(self._cfg)

    @property
    def features(self) -> FeatureCache:
        if self._cache is None:
            path = self._cfg["text_model_path"]
            if path is None:
                self._cache = shared_feature_cache()
            else:
                from embed.encoders import FrozenEncoders

                self._cache = FeatureCache(FrozenEncoders(text_model_path=path))
        return self._cache

    def trainable_parameter_names(self) -> list[str]:
        return ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]

    def featurize_responses(
        self, images: Sequence[Image.Image], questions: Sequence[str], responses: Sequence[Sequence[str]]
    ) -> tuple[torch.Tensor, ...]:
        k = responses_per_prompt(responses)
        img = self.features.images(images)
        q = self.features.texts(questions)
        flat = [r for group in responses for r in group]
        resp = self.features.texts(flat).reshape(len(responses), k, -1)
        return img, q, resp

    def forward(self, img: torch.Tensor, q: torch.Tensor, resp: torch.Tensor) -> torch.Tensor:
        k = resp.shape[1]
        q_k = q.unsqueeze(1).expand(-1, k, -1)
        x = torch.cat([img.unsqueeze(1).expand(-1, k, -1), q_k, resp, q_k * resp], dim=-1)
        return self.fc2(self.act(self.fc1(x))).squeeze(-1)
