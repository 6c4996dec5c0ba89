"""The one small interface every Mixture-of-Rewards router implements.

A router turns an input x (the embedding of an (image, question) prompt) into non-negative
weights over the client agents, and the fused reward is ``sum_k w_k(x) * s_k``. Why the
weights depend on x **only**, never on the scores: that is what makes the ``fused-only``
privacy mode possible. The server can compute every weight in plaintext *before* any score
arrives, multiply each client's CKKS ciphertext by its plaintext weights and add the
products homomorphically; the key holder then decrypts only the fused reward, so the server
never sees one client's score. A router that looked at scores would need them decrypted.

Missing agents (a client that did not answer before the deadline) are handled by
renormalisation: the weights of the agents that answered are rescaled to sum to 1, so the
ratios between them are kept. Privacy modes and robustness checks wrap a router; they do not
branch inside it.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch

from crypto.canonical import canonical_json
from server.errors import RouterConfigError, RouterInputError


@runtime_checkable
class Router(Protocol):
    """What the round coordinator needs from a router (see the module docstring)."""

    agents: tuple[str, ...]

    def weights(self, features: torch.Tensor, available: Sequence[str]) -> torch.Tensor: ...

    def fuse(self, features: torch.Tensor, scores: Mapping[str, torch.Tensor]) -> torch.Tensor: ...

    def digest(self) -> str: ...


def validate_agents(agents: Sequence[str]) -> tuple[str, ...]:
    """A non-empty tuple of unique, non-empty agent names (order is the weight column order)."""
    if isinstance(agents, str):
        raise RouterConfigError(f"agents must be a sequence of names, not the string {agents!r}")
    names = tuple(agents)
    if not names:
        raise RouterConfigError("agents must name at least one agent")
    for name in names:
        if not isinstance(name, str) or not name:
            raise RouterConfigError(f"agents: every name must be a non-empty string, got {name!r}")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise RouterConfigError(f"agents: duplicate names {duplicates}")
    return names


def check_features(features: torch.Tensor, feature_dim: int | None = None) -> None:
    """Refuse features that are not a finite ``[B, D]`` float tensor (with ``D == feature_dim``)."""
    if not isinstance(features, torch.Tensor):
        raise RouterInputError(f"features must be a torch.Tensor, got {type(features).__name__}")
    if features.dim() != 2:
        raise RouterInputError(f"features must be [B, D], got shape {list(features.shape)}")
    if not features.is_floating_point():
        raise RouterInputError(f"features must be floating point, got {features.dtype}")
    if feature_dim is not None and features.shape[1] != feature_dim:
        raise RouterInputError(f"features have dimension {features.shape[1]}, this router expects {feature_dim}")
    if not bool(torch.isfinite(features).all()):
        raise RouterInputError("features contain NaN or infinite values")


class RouterBase(ABC):
    """Shared behaviour: subclasses only say how to weight the agents present in each row.

    ``masked_weights`` is the single primitive (per-row masks are what router training needs);
    ``weights``, ``fuse``, ``weights_for_fused_only`` and ``digest`` are built on it here.
    """

    kind: ClassVar[str]
    agents: tuple[str, ...]

    @abstractmethod
    def masked_weights(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``[B, A]`` weights over ``self.agents``: 0 where ``mask`` is False, each row sums to 1."""

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """A JSON-able description of the router (kind, agents, settings) for the audit log."""

    def state_fingerprint(self) -> dict[str, Any]:
        """JSON-able summary of learned state that the digest must also cover (none by default)."""
        return {}

    def digest(self) -> str:
        """``sha256:<hex>`` over the canonical config and learned state: what the audit log records."""
        payload = canonical_json({"config": self.config(), "state": self.state_fingerprint()})
        return "sha256:" + hashlib.sha256(payload).hexdigest()

    def mask_for(self, available: Sequence[str], batch: int) -> torch.Tensor:
        """The ``[batch, A]`` boolean mask of the agents named in ``available``."""
        if isinstance(available, str):
            raise RouterInputError(f"available must be a sequence of agent names, not the string {available!r}")
        names = list(available)
        if not names:
            raise RouterInputError("available is empty: no agent answered, there is nothing to fuse")
        unknown = sorted(set(names) - set(self.agents))
        if unknown:
            raise RouterInputError(f"available names unknown agents {unknown}; this router knows {list(self.agents)}")
        if len(set(names)) != len(names):
            raise RouterInputError(f"available names an agent twice: {names}")
        row = torch.tensor([a in names for a in self.agents], dtype=torch.bool)
        return row.expand(batch, -1)

    def weights(self, features: torch.Tensor, available: Sequence[str]) -> torch.Tensor:
        """``[B, len(available)]`` weights, columns in the order of ``available``, rows summing to 1."""
        check_features(features)
        mask = self.mask_for(available, features.shape[0])
        with torch.no_grad():
            full = self.masked_weights(features, mask)
        columns = [self.agents.index(a) for a in available]
        return full[:, columns].detach()

    def weights_for_fused_only(self, features: torch.Tensor, available: Sequence[str]) -> torch.Tensor:
        """The same weights as :meth:`weights`, named for the ``fused-only`` privacy mode.

        They are a function of the input alone, so the server computes them before any score
        arrives and applies them to ciphertexts (plain-multiply, then add); no single client's
        score is ever decrypted. Returned as float64 on CPU, the precision CKKS encodes.
        """
        return self.weights(features, available).to(device="cpu", dtype=torch.float64)

    def fuse(self, features: torch.Tensor, scores: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``[B]`` fused reward from the per-agent ``[B]`` scores of the agents that answered."""
        check_features(features)
        batch = features.shape[0]
        if not scores:
            raise RouterInputError("scores is empty: no agent answered, there is nothing to fuse")
        available = [a for a in self.agents if a in scores]
        unknown = sorted(set(scores) - set(self.agents))
        if unknown:
            raise RouterInputError(f"scores from unknown agents {unknown}; this router knows {list(self.agents)}")
        columns = []
        for agent in available:
            s = scores[agent]
            if not isinstance(s, torch.Tensor) or s.shape != (batch,):
                shape = list(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
                raise RouterInputError(f"scores[{agent!r}] must be a tensor of shape [{batch}], got {shape}")
            if not bool(torch.isfinite(s).all()):
                raise RouterInputError(f"scores[{agent!r}] contains NaN or infinite values")
            columns.append(s.to(torch.float64))
        w = self.weights(features, available).to(torch.float64)
        return (w * torch.stack(columns, dim=1)).sum(dim=1)


def renormalise(raw: torch.Tensor, mask: torch.Tensor, agents: Sequence[str]) -> torch.Tensor:
    """Zero the masked-out columns of non-negative ``raw`` weights and rescale rows to sum to 1."""
    if mask.shape != raw.shape or mask.dtype != torch.bool:
        raise RouterInputError(f"mask must be a bool tensor of shape {list(raw.shape)}, got {mask.dtype} "
                               f"{list(mask.shape)}")
    kept = raw * mask
    totals = kept.sum(dim=1, keepdim=True)
    if bool((totals <= 0).any()):
        row = int((totals.squeeze(1) <= 0).nonzero()[0])
        present = [a for a, m in zip(agents, mask[row].tolist(), strict=True) if m]
        raise RouterInputError(f"row {row}: the available agents {present} carry no weight, cannot renormalise")
    return kept / totals
