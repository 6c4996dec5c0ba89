"""The one small interface every reward model implements, whatever its architecture.

Why an abstract base and not a protocol: DP training (Opacus) needs a real ``nn.Module`` and
the agent needs save/load/digest to behave the same for every architecture, so those live
here once. An architecture only says how to turn data into tensors and tensors into scores.

Tensor layout: ``featurize(pairs)`` returns a tuple of tensors whose first dimension is the
*pair* (one DP sample = one preference pair). Tensors that differ between the two answers
carry a second dimension ``K`` (``K == 2`` for (chosen, rejected); ``K == 1`` when scoring);
tensors shared by both answers (the image, the question) do not. ``forward(*tensors)``
returns ``[B, K]`` scores. Opacus' per-sample gradients are taken over the first dimension
only, so the two answers of a pair are never counted as two samples.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from client_agent.errors import CheckpointError, RewardModelError
from corpus.types import PreferencePair

MANIFEST = "reward_model.json"
WEIGHTS = "weights.safetensors"


class BradleyTerryLoss(nn.Module):
    """``-log σ(r_chosen − r_rejected)`` on ``[B, 2]`` scores.

    A module with a ``reduction`` attribute (not a bare function) because Opacus' ghost
    clipping re-runs the criterion with ``reduction="none"`` to get per-pair losses.
    """

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = reduction

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        if scores.dim() != 2 or scores.shape[1] != 2:
            raise RewardModelError(f"Bradley-Terry loss needs [B, 2] scores, got {tuple(scores.shape)}")
        per_pair = -F.logsigmoid(scores[:, 0] - scores[:, 1])
        if self.reduction == "none":
            return per_pair
        if self.reduction == "sum":
            return per_pair.sum()
        return per_pair.mean()


class RewardModel(nn.Module, ABC):
    """Scores (image, question, response) triples; trainable on preference pairs."""

    arch: ClassVar[str]
    # How DP-SGD computes each pair's gradient norm under ``clipping = "auto"`` (client_agent.dp.step):
    # a mode other than "flat" only where it supports every trainable layer *and* it measured cheaper.
    dp_clipping: ClassVar[Literal["flat", "ghost", "bk"]] = "flat"

    # -- what each architecture defines ---------------------------------------------------------
    @abstractmethod
    def config(self) -> dict[str, Any]:
        """JSON-able constructor arguments: ``type(self)(**config())`` rebuilds the structure."""

    @abstractmethod
    def featurize_responses(
        self, images: Sequence[Image.Image], questions: Sequence[str], responses: Sequence[Sequence[str]]
    ) -> tuple[torch.Tensor, ...]:
        """Tensors for ``B`` prompts with ``K`` responses each (``responses[b]`` has length ``K``)."""

    @abstractmethod
    def trainable_parameter_names(self) -> list[str]:
        """Names of the parameters this architecture *means* to train (by design, not by flag).

        The DP guard checks each of these is trainable, moves and stays finite, and that
        every other parameter stays put — so a LoRA weight frozen by mistake is caught.
        """

    # -- shared behaviour -----------------------------------------------------------------------
    def featurize(self, pairs: Sequence[PreferencePair]) -> tuple[torch.Tensor, ...]:
        """Training tensors, first dim = pair, answers in the order (chosen, rejected)."""
        if not pairs:
            raise RewardModelError("featurize: no preference pairs given")
        return self.featurize_responses(
            [p.prompt.image for p in pairs], [p.prompt.question for p in pairs], [(p.chosen, p.rejected) for p in pairs]
        )

    @torch.no_grad()
    def score(self, images: Sequence[Image.Image], questions: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """``[B]`` rewards for ``B`` (image, question, response) triples (eval mode, no grad)."""
        if not (len(images) == len(questions) == len(responses)):
            raise RewardModelError(
                f"score: {len(images)} images, {len(questions)} questions, {len(responses)} responses differ in length"
            )
        if not responses:
            return torch.empty(0)
        was_training = self.training
        self.eval()
        try:
            tensors = self.featurize_responses(images, questions, [(r,) for r in responses])
            return self(*tensors)[:, 0].detach().float()
        finally:
            self.train(was_training)

    def model_digest(self) -> str:
        """Hex SHA-256 over every weight (name, dtype, shape, bytes), in name order."""
        h = hashlib.sha256(self.arch.encode())
        for name, tensor in sorted(self.state_dict().items()):
            t = tensor.detach().cpu().contiguous()
            h.update(f"|{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.hexdigest()

    def save(self, directory: str | Path) -> Path:
        """Write the manifest (arch, config, digest) and safetensors weights into ``directory``."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous().clone() for k, v in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS))
        manifest = {"arch": self.arch, "config": self.config(), "digest": self.model_digest()}
        (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        self._save_extra(directory)
        return directory

    def _save_extra(self, directory: Path) -> None:
        """Architectures with side files (a tokenizer) write them here."""

    @classmethod
    def _from_manifest(cls, directory: Path, config: dict[str, Any]) -> RewardModel:
        return cls(**config)


def responses_per_prompt(responses: Sequence[Sequence[str]]) -> int:
    """The common group size k; a ragged batch cannot be reshaped to (prompts, k, ...) so it is refused."""
    k = len(responses[0]) if responses else 0
    if any(len(r) != k for r in responses):
        raise RewardModelError("featurize: every prompt needs the same number of responses")
    return k


def question_response_pairs(questions: Sequence[str], responses: Sequence[Sequence[str]]
                            ) -> tuple[list[str], list[str]]:
    """Each response beside its own question, flattened prompt-major (the order every reshape assumes)."""
    qs = [q for q, group in zip(questions, responses, strict=True) for _ in group]
    rs = [r for group in responses for r in group]
    return qs, rs


def pair_accuracy(model: RewardModel, tensors: Sequence[torch.Tensor], *, batch_size: int = 256) -> float:
    """Fraction of pairs whose chosen answer outscores the rejected one (ties count as wrong)."""
    n = tensors[0].shape[0]
    if n == 0:
        raise RewardModelError("pair_accuracy: no pairs")
    was_training = model.training
    model.eval()
    correct = 0
    try:
        with torch.no_grad():
            for i in range(0, n, batch_size):
                scores = model(*(t[i : i + batch_size] for t in tensors))
                correct += int((scores[:, 0] > scores[:, 1]).sum())
    finally:
        model.train(was_training)
    return correct / n


def read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not found (not a saved reward model directory)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable manifest: {exc}") from None
    for key, kind in (("arch", str), ("config", dict), ("digest", str)):
        if not isinstance(manifest.get(key), kind):
            raise CheckpointError(f"{path}: key {key!r} missing or not a {kind.__name__}")
    return dict(manifest)
