"""A member's own reward-model code, named as ``package.module:factory`` in ``[model] arch``.

Why only by name in the agent's own config: importing a module runs its code. The factory is
imported when the agent config names it — never because a saved model directory, a server
message or a dataset says so (:func:`client_agent.rewards.registry.load_reward_model`
refuses a saved entry-point model whose name differs from the config's).

The factory is called with ``[model] params`` as keyword arguments and returns an
``nn.Module`` that implements the reward-model protocol (``docs/reward-models.md``):
``featurize_responses(images, questions, responses) -> tuple[Tensor, ...]`` (first dim = prompt,
per-answer tensors ``[B, K, ...]``) and ``forward(*tensors) -> [B, K]`` scores; optionally
``trainable_parameter_names()``. A :class:`~client_agent.rewards.base.RewardModel` subclass
qualifies as is. The module is wrapped here so saving, digests, DP training, the #820 guard
and the privacy report are the same as for the built-ins.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import nn

from client_agent.errors import RewardModelError
from client_agent.rewards.base import RewardModel

ENTRY_POINT_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*$")


def is_entry_point(arch: str) -> bool:
    return ":" in arch


def load_factory(entry_point: str) -> Callable[..., Any]:
    """Import ``package.module`` and return its ``factory``; one-line errors for every failure."""
    if not ENTRY_POINT_RE.match(entry_point):
        raise RewardModelError(f"{entry_point!r} is not an entry point of the form package.module:factory")
    module_name, attr = entry_point.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RewardModelError(f"entry point {entry_point}: cannot import {module_name!r}: {exc} "
                               "(install the member's package, or put it on PYTHONPATH)") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise RewardModelError(f"entry point {entry_point}: {module_name} has no callable {attr!r}")
    return factory  # type: ignore[no-any-return]


def check_factory_params(entry_point: str, params: dict[str, Any]) -> list[str]:
    """Names in ``params`` the factory does not accept (nothing if it takes ``**kwargs``)."""
    signature = inspect.signature(load_factory(entry_point))
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()):
        return []
    return [k for k in params if k not in signature.parameters]


class EntryPointReward(RewardModel):
    """The member's module as ``self.inner``, behind the common reward-model interface."""

    arch: ClassVar[str] = "entry-point"

    def __init__(self, *, entry_point: str, params: dict[str, Any] | None = None) -> None:
        super().__init__()
        self._cfg: dict[str, Any] = {"entry_point": entry_point, "params": dict(params or {})}
        try:
            inner = load_factory(entry_point)(**self._cfg["params"])
        except RewardModelError:
            raise
        except TypeError as exc:
            raise RewardModelError(f"entry point {entry_point}: factory refused [model].params: {exc}") from None
        missing = [m for m in ("featurize_responses", "forward") if not callable(getattr(inner, m, None))]
        if not isinstance(inner, nn.Module) or missing:
            raise RewardModelError(f"entry point {entry_point}: the factory must return an nn.Module with "
                                   f"featurize_responses() and forward(); got {type(inner).__name__}"
                                   + (f" without {', '.join(missing)}" if missing else ""))
        self.inner: Any = inner

    @property
    def entry_point(self) -> str:
        return str(self._cfg["entry_point"])

    def config(self) -> dict[str, Any]:
        return {"entry_point": self._cfg["entry_point"], "params": dict(self._cfg["params"])}

    @classmethod
    def _from_manifest(cls, directory: Path, config: dict[str, Any]) -> RewardModel:
        return cls(**config)

    def trainable_parameter_names(self) -> list[str]:
        names = getattr(self.inner, "trainable_parameter_names", None)
        if callable(names):
            return [f"inner.{n}" for n in names()]
        return [f"inner.{n}" for n, p in self.inner.named_parameters() if p.requires_grad]

    def featurize_responses(
        self, images: Sequence[Image.Image], questions: Sequence[str], responses: Sequence[Sequence[str]]
    ) -> tuple[torch.Tensor, ...]:
        tensors = self.inner.featurize_responses(images, questions, responses)
        if not isinstance(tensors, tuple | list) or not all(isinstance(t, torch.Tensor) for t in tensors):
            raise RewardModelError(f"entry point {self.entry_point}: featurize_responses must return a tuple of "
                                   "tensors")
        bad = [tuple(t.shape) for t in tensors if t.dim() == 0 or t.shape[0] != len(responses)]
        if bad:
            raise RewardModelError(f"entry point {self.entry_point}: every tensor's first dimension must be the "
                                   f"{len(responses)} prompts (one DP sample = one pair); got shapes {bad}")
        return tuple(tensors)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        scores = self.inner(*tensors)
        if not isinstance(scores, torch.Tensor) or scores.dim() != 2 or scores.shape[0] != tensors[0].shape[0]:
            shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
            raise RewardModelError(f"entry point {self.entry_point}: forward must return [B, K] scores, got {shape}")
        return scores
