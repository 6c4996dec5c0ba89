"""Reward scorers the GRPO runs optimise: one calibrated model, or a routed mixture of them.

Why calibrate: reward models of different architectures put their scores on arbitrary scales;
averaging raw scores would let the loudest model win. Each model is z-scored with the mean and
std of its own scores on the *public* calibration batch — the same
:class:`wire.calibration.Calibration` the agents report and the server measures — so the fusion
sees comparable numbers without touching private data. A mixture is ``sum_k w_k(x) z_k`` with the
weights of a :mod:`server.router` router — the very code the networked server fuses with — combined
by a :class:`~server.router.MixingRule` (plain sum, group-normalised, or mean − λ·std). The GRPO
groups of a batch are the items sharing a prompt id. The oracle mixture gives each prompt's domain
owner weight 1 (it reads the prompt's domain label, which no deployable router has).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from client_agent.rewards.base import RewardModel
from corpus.types import PreferencePair, Prompt
from server.router import PLAIN_MIXING, MixingRule, RouterBase, prompt_features
from server.router.mixing import group_ids
from sim.errors import EvalRunError
from wire.calibration import Calibration, CalibrationError

_CHUNK = 64


class Scorer(Protocol):
    """``score(prompts, responses) -> [B]`` float64 rewards, one per (prompt, response)."""

    name: str

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> torch.Tensor: ...


class PromptFeatures:
    """Router features per prompt (frozen image + question embeddings), computed once per prompt id."""

    def __init__(self) -> None:
        self._rows: dict[str, torch.Tensor] = {}

    def __call__(self, prompts: Sequence[Prompt]) -> torch.Tensor:
        missing = list({p.prompt_id: p for p in prompts if p.prompt_id not in self._rows}.values())
        if missing:
            for prompt, row in zip(missing, prompt_features(missing), strict=True):
                self._rows[prompt.prompt_id] = row
        return torch.stack([self._rows[p.prompt_id] for p in prompts])


def raw_scores(model: RewardModel, prompts: Sequence[Prompt], responses: Sequence[str]) -> torch.Tensor:
    """The model's own scores, in chunks (a LoRA encoder on thousands of answers at once would not fit)."""
    out = [
        model.score([p.image for p in prompts[i : i + _CHUNK]], [p.question for p in prompts[i : i + _CHUNK]],
                    list(responses[i : i + _CHUNK]))
        for i in range(0, len(prompts), _CHUNK)
    ]
    return torch.cat(out).double() if out else torch.empty(0, dtype=torch.float64)


@dataclass
class CalibratedModel:
    """A reward model on the z-scale of the public calibration batch."""

    name: str
    model: RewardModel
    calibration: Calibration

    @classmethod
    def calibrate(cls, name: str, model: RewardModel, batch: Sequence[tuple[Prompt, str]]) -> CalibratedModel:
        scores = raw_scores(model, [p for p, _ in batch], [r for _, r in batch])
        try:
            return cls(name, model, Calibration.measure(scores))
        except CalibrationError as exc:
            raise EvalRunError(f"calibration of {name!r}: {exc}; the model did not learn") from None

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> torch.Tensor:
        return self.calibration.zscore(raw_scores(self.model, prompts, responses))


class Mixture:
    """``sum_k w_k(x) z_k`` over calibrated members, with a router's input-conditioned weights."""

    def __init__(self, name: str, members: Sequence[CalibratedModel], router: RouterBase,
                 features: PromptFeatures, *, mixing: MixingRule = PLAIN_MIXING) -> None:
        if tuple(m.name for m in members) != tuple(router.agents):
            raise EvalRunError(f"mixture {name!r}: members {[m.name for m in members]} differ from the router's "
                               f"agents {list(router.agents)}")
        self.name, self.members, self.router, self.features = name, tuple(members), router, features
        self.mixing = mixing

    def weights(self, prompts: Sequence[Prompt]) -> torch.Tensor:
        """``[B, K]`` router weights for each prompt, columns in member order."""
        return self.router.weights(self.features(prompts), list(self.router.agents))

    def member_scores(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> dict[str, torch.Tensor]:
        return {m.name: m.score(prompts, responses) for m in self.members}

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> torch.Tensor:
        if not prompts:
            return torch.empty(0, dtype=torch.float64)
        scores = self.member_scores(prompts, responses)
        if self.mixing.is_plain:
            return self.router.fuse(self.features(prompts), scores)
        stacked = torch.stack([scores[m.name] for m in self.members], dim=1)
        return self.mixing.mix(self.weights(prompts).double(), stacked, group_ids([p.prompt_id for p in prompts]))


class OracleMixture(Mixture):
    """Weight 1 on the member that owns each prompt's domain (uniform where no member owns it)."""

    def __init__(self, name: str, members: Sequence[CalibratedModel], owners: dict[str, str]) -> None:
        self.name, self.members, self.owners, self.mixing = name, tuple(members), dict(owners), PLAIN_MIXING

    def weights(self, prompts: Sequence[Prompt]) -> torch.Tensor:
        names = [m.name for m in self.members]
        rows = [[float(n == self.owners[p.domain]) for n in names] if p.domain in self.owners
                else [1 / len(names)] * len(names) for p in prompts]
        return torch.tensor(rows, dtype=torch.float64).reshape(len(prompts), len(names))

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> torch.Tensor:
        if not prompts:
            return torch.empty(0, dtype=torch.float64)
        scores = self.member_scores(prompts, responses)
        return (self.weights(prompts) * torch.stack([scores[m.name] for m in self.members], dim=1)).sum(1)


def scorer_pair_accuracy(scorer: Scorer, pairs: Sequence[PreferencePair]) -> float:
    """Fraction of held-out pairs where the chosen answer outscores the rejected one (a tie is 1/2)."""
    if not pairs:
        raise EvalRunError("pair accuracy: no pairs")
    prompts = [p.prompt for p in pairs]
    both = scorer.score(prompts + prompts, [p.chosen for p in pairs] + [p.rejected for p in pairs])
    chosen, rejected = both[: len(pairs)], both[len(pairs):]  # one call: a pair is one group for group-normalising
    return float(((chosen > rejected).double() + 0.5 * (chosen == rejected).double()).mean())
