"""The learned, input-conditioned Mixture-of-Rewards router.

A small MLP maps the prompt embedding x (EfficientNet-lite0 image features ++ MiniLM question
features, see :mod:`server.router.features`) to one logit per agent; the weights are a softmax
over the agents that answered (a masked softmax *is* the renormalised full softmax). The last
layer starts at zero, so an unfitted router is exactly the uniform router.

Features are standardised with the training split's mean/std, stored as buffers so a saved
router carries them. Files are safetensors (no pickle: a router file may come from elsewhere)
with the config in the metadata; the digest covers config and every tensor, byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from server.errors import RouterConfigError, RouterInputError, RouterStateError
from server.router.base import RouterBase, check_features, validate_agents
from server.router.features import PROMPT_FEATURE_DIM
from server.router.training import RouterFitConfig, RouterFitReport, RouterTrainingSet, fit_router

FILE_FORMAT = "mor-secure-router/1"


class LearnedRouter(torch.nn.Module, RouterBase):
    """Softmax weights over agents from an MLP over prompt features; fitted by :meth:`fit`."""

    kind: ClassVar[str] = "learned"
    feature_mean: torch.Tensor
    feature_std: torch.Tensor

    def __init__(self, agents: Sequence[str], *, feature_dim: int = PROMPT_FEATURE_DIM, hidden: int = 64,
                 seed: int = 0) -> None:
        super().__init__()
        self.agents = validate_agents(agents)
        for name, value in {"feature_dim": feature_dim, "hidden": hidden}.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise RouterConfigError(f"learned router: {name} must be a positive integer, got {value!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise RouterConfigError(f"learned router: seed must be an integer, got {seed!r}")
        self.feature_dim, self.hidden, self.seed = feature_dim, hidden, seed
        self.register_buffer("feature_mean", torch.zeros(feature_dim))
        self.register_buffer("feature_std", torch.ones(feature_dim))
        self.hidden_layer = torch.nn.Linear(feature_dim, hidden)
        self.output_layer = torch.nn.Linear(hidden, len(self.agents))
        self.log_bt_scale = torch.nn.Parameter(torch.zeros(()))
        gen = torch.Generator().manual_seed(seed)
        torch.nn.init.kaiming_uniform_(self.hidden_layer.weight, a=5**0.5, generator=gen)
        bound = 1 / feature_dim**0.5
        torch.nn.init.uniform_(self.hidden_layer.bias, -bound, bound, generator=gen)
        torch.nn.init.zeros_(self.output_layer.weight)
        torch.nn.init.zeros_(self.output_layer.bias)
        self.train(False)

    # -- the router primitive --------------------------------------------------------------------
    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """``[B, A]`` unnormalised agent preferences for each prompt."""
        x = (features.float() - self.feature_mean) / self.feature_std
        return self.output_layer(torch.nn.functional.gelu(self.hidden_layer(x)))

    def masked_weights(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        check_features(features, self.feature_dim)
        if mask.shape != (features.shape[0], len(self.agents)) or mask.dtype != torch.bool:
            raise RouterInputError(f"mask must be bool [{features.shape[0]}, {len(self.agents)}], "
                                    f"got {mask.dtype} {list(mask.shape)}")
        return torch.softmax(self.logits(features).masked_fill(~mask, float("-inf")), dim=1)

    # -- training hooks (see server.router.training) ---------------------------------------------
    def bt_scale(self) -> torch.Tensor:
        return self.log_bt_scale.exp()

    def set_feature_normalisation(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(std)

    def fit(self, data: RouterTrainingSet, config: RouterFitConfig | None = None) -> RouterFitReport:
        """Maximise the Bradley–Terry likelihood of the fused reward on ``data`` (in place)."""
        return fit_router(self, data, config or RouterFitConfig())

    # -- identity and persistence ----------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "agents": list(self.agents), "feature_dim": self.feature_dim,
                "hidden": self.hidden, "seed": self.seed}

    def state_fingerprint(self) -> dict[str, Any]:
        return {name: [str(t.dtype), list(t.shape), hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()]
                for name, t in sorted(self.state_dict().items())}

    def save(self, path: str | Path, *, overwrite: bool = False) -> str:
        """Write a safetensors file (atomically; refuses to replace one unless told) and return the digest."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise RouterStateError(f"{path}: already exists (pass overwrite=True to replace it)")
        tmp = path.with_name(path.name + ".tmp")
        tensors = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, str(tmp), metadata={"format": FILE_FORMAT, "config": json.dumps(self.config())})
        os.replace(tmp, path)
        return self.digest()

    @classmethod
    def load(cls, path: str | Path, *, expected_digest: str | None = None) -> LearnedRouter:
        """Read a router saved by :meth:`save`; with ``expected_digest``, refuse any other router."""
        path = Path(path)
        if not path.is_file():
            raise RouterStateError(f"{path}: no such router file")
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise RouterStateError(f"{path}: not a readable safetensors file: {exc}") from None
        if metadata.get("format") != FILE_FORMAT:
            raise RouterStateError(f"{path}: format {metadata.get('format')!r}, expected {FILE_FORMAT!r}")
        try:
            config = json.loads(metadata["config"])
            if config["kind"] != cls.kind:
                raise ValueError(f"kind {config['kind']!r} is not {cls.kind!r}")
            router = cls(config["agents"], feature_dim=config["feature_dim"], hidden=config["hidden"],
                         seed=config["seed"])
        except (KeyError, TypeError, ValueError, RouterConfigError) as exc:
            raise RouterStateError(f"{path}: invalid router config in metadata: {exc}") from None
        expected = {k: (v.dtype, v.shape) for k, v in router.state_dict().items()}
        found = {k: (v.dtype, v.shape) for k, v in tensors.items()}
        if expected != found:
            raise RouterStateError(f"{path}: tensors {sorted(found)} do not match a {cls.kind} router "
                                   f"with this config (expected {sorted(expected)} with their shapes)")
        router.load_state_dict(tensors)
        if expected_digest is not None and router.digest() != expected_digest:
            raise RouterStateError(f"{path}: digest {router.digest()} differs from the expected {expected_digest}")
        return router
