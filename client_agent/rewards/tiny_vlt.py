"""Architecture 2: a small vision-language transformer trained from scratch.

No pretrained weights: 8x8 RGB patches of the 64x64 image are linearly embedded; the question
and response are WordPiece-tokenised (the vocabulary file shipped with MiniLM, only its
*vocabulary*) and the ids hashed into a small number of buckets, so the learned embedding
table stays small — per-sample gradients of an embedding cost ``B x vocab x dim`` memory, and
a full 30k vocabulary would swamp DP-SGD's noise budget. A 2-layer pre-LN transformer with
hand-rolled attention (``nn.Linear`` + ``nn.LayerNorm`` + ``nn.Embedding`` only, all of which
Opacus computes per-sample gradients for) reads ``[CLS] patches question [SEP] response [SEP]``.
Hand-rolled rather than ``nn.TransformerEncoder`` because ``nn.MultiheadAttention`` is not
supported by Opacus and its fused fast path would hide the layers Opacus hooks.

The pair dimension ``K`` rides along as an extra batch-like dimension inside every layer
(``[B, K, L, d]``), so per-sample gradients are per pair.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from client_agent.errors import CheckpointError, RewardModelError
from client_agent.rewards.base import RewardModel, question_response_pairs, responses_per_prompt

PAD = 0
TOKENIZER_DIR = "tokenizer"
PATCH = 8
IMAGE_SIDE = 64


def image_patches(images: Sequence[Image.Image]) -> torch.Tensor:
    """``[B, 64, 192]`` non-overlapping 8x8 RGB patches scaled to [-1, 1]."""
    arrays = []
    for img in images:
        rgb = img.convert("RGB")
        if rgb.size != (IMAGE_SIDE, IMAGE_SIDE):
            rgb = rgb.resize((IMAGE_SIDE, IMAGE_SIDE), Image.Resampling.BILINEAR)
        arrays.append(np.asarray(rgb, dtype=np.float32) / 127.5 - 1.0)
    x = torch.from_numpy(np.stack(arrays))  # B, H, W, C
    b, g = x.shape[0], IMAGE_SIDE // PATCH
    x = x.reshape(b, g, PATCH, g, PATCH, 3).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, g * g, PATCH * PATCH * 3).contiguous()


def bucket_ids(ids: torch.Tensor, buckets: int) -> torch.Tensor:
    """Hash WordPiece ids into ``buckets`` (0 stays padding)."""
    return torch.where(ids == 0, ids, 1 + ids % (buckets - 1))


class _Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        *lead, length, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).reshape(*lead, length, 3, self.heads, d // self.heads).unbind(-3)
        q, k, v = (t.transpose(-3, -2) for t in (q, k, v))  # [..., H, L, dh]
        att = (q @ k.transpose(-1, -2)) / (d // self.heads) ** 0.5
        att = att.masked_fill(~key_mask[..., None, None, :], float("-inf")).softmax(-1)
        y = (att @ v).transpose(-3, -2).reshape(*lead, length, d)
        x = x + self.proj(y)
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class TinyVLTReward(RewardModel):
    """From-scratch patch + hashed-WordPiece transformer, scalar head on [CLS ; mean(text)]."""

    arch: ClassVar[str] = "tiny-vlt"

    def __init__(
        self,
        *,
        dim: int = 32,
        layers: int = 2,
        heads: int = 4,
        max_text: int = 48,
        buckets: int = 1024,
        seed: int = 0,
        tokenizer: Any = None,
    ) -> None:
        super().__init__()
        if dim % heads:
            raise RewardModelError(f"tiny-vlt: dim={dim} is not divisible by heads={heads}")
        self._cfg: dict[str, Any] = {
            "dim": dim, "layers": layers, "heads": heads, "max_text": max_text, "buckets": buckets, "seed": seed,
        }
        if tokenizer is None:
            from transformers import AutoTokenizer

            from embed.encoders import default_text_model_path

            tokenizer = AutoTokenizer.from_pretrained(str(default_text_model_path()), local_files_only=True)
        self.tokenizer = tokenizer
        n_patches = (IMAGE_SIDE // PATCH) ** 2
        self.n_patches = n_patches
        gen = torch.Generator().manual_seed(seed)
        self.patch_embed = nn.Linear(PATCH * PATCH * 3, dim)
        self.cls = nn.Linear(1, dim)  # a learned [CLS] vector (Linear on a constant 1: Opacus-friendly)
        self.token_embed = nn.Embedding(buckets, dim)
        self.segment_embed = nn.Embedding(2, dim)
        self.pos_embed = nn.Embedding(1 + n_patches + max_text, dim)
        self.blocks = nn.ModuleList(_Block(dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(2 * dim, 1)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if p.dim() >= 2:
                    p.normal_(0.0, 0.02, generator=gen)
                elif name.endswith("bias"):
                    p.zero_()

    def config(self) -> dict[str, Any]:
        return dict(self._cfg)

    def _save_extra(self, directory: Path) -> None:
        self.tokenizer.save_pretrained(str(directory / TOKENIZER_DIR))

    @classmethod
    def _from_manifest(cls, directory: Path, config: dict[str, Any]) -> RewardModel:
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(directory / TOKENIZER_DIR), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{directory / TOKENIZER_DIR}: cannot load tokenizer: {exc}") from None
        return cls(tokenizer=tokenizer, **config)

    def trainable_parameter_names(self) -> list[str]:
        return [name for name, _ in self.named_parameters()]

    def featurize_responses(
        self, images: Sequence[Image.Image], questions: Sequence[str], responses: Sequence[Sequence[str]]
    ) -> tuple[torch.Tensor, ...]:
        k = responses_per_prompt(responses)
        qs, rs = question_response_pairs(questions, responses)
        enc = self.tokenizer(qs, rs, truncation=True, max_length=self._cfg["max_text"], padding="max_length",
                             return_tensors="pt", return_token_type_ids=True)
        shape = (len(responses), k, -1)
        tokens = bucket_ids(enc["input_ids"], self._cfg["buckets"]).reshape(shape)
        return image_patches(images), tokens, enc["token_type_ids"].reshape(shape)

    def forward(self, patches: torch.Tensor, tokens: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
        b, k, t = tokens.shape
        x_cls = self.cls(torch.ones(b, k, 1, 1, device=tokens.device))
        x_img = self.patch_embed(patches).unsqueeze(1).expand(-1, k, -1, -1)
        x_txt = self.token_embed(tokens) + self.segment_embed(segments)
        x = torch.cat([x_cls, x_img, x_txt], dim=2)
        positions = torch.arange(x.shape[2], device=tokens.device).expand(b, k, -1)
        x = x + self.pos_embed(positions)
        text_mask = tokens != PAD
        key_mask = torch.cat([torch.ones(b, k, 1 + self.n_patches, dtype=torch.bool, device=tokens.device),
                              text_mask], dim=2)
        for block in self.blocks:
            x = block(x, key_mask)
        x = self.ln_f(x)
        m = text_mask.unsqueeze(-1).to(x.dtype)
        text_mean = (x[:, :, 1 + self.n_patches:] * m).sum(2) / m.sum(2).clamp(min=1.0)
        return self.head(torch.cat([x[:, :, 0], text_mean], dim=-1)).squeeze(-1)
