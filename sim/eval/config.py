"""What one ``mor eval`` run does, as one frozen, validated value.

Why the data is fixed across seeds: a seed is *training randomness* (DP noise, weight init,
router split, GRPO sampling), not a new consortium. Keeping every client's pairs, the public
pairs, the prompts and the held-out sets fixed means the spread over seeds measures how
stable each method is, and it lets the frozen-encoder features be computed once.

Presets: :meth:`EvalConfig.full` (what the published table ran, <= 25 min on 2 CPU cores),
:meth:`EvalConfig.quick` (a few minutes, same shape) and :meth:`EvalConfig.smoke` (the test
suite's tiny run, seconds per stage; its numbers mean nothing).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from sim.errors import EvalConfigError

ARCHS = ("frozen-mlp", "tiny-vlt", "lora-minilm")


@dataclass(frozen=True)
class ClientSpec:
    """One consortium member: its name, the hidden rule that labels its pairs, its reward-model architecture."""

    name: str
    style: str
    arch: str


DEFAULT_CLIENTS = (
    ClientSpec("medical", "medical", "frozen-mlp"),
    ClientSpec("finance", "finance", "tiny-vlt"),
    ClientSpec("detail", "detail", "lora-minilm"),
)


@dataclass(frozen=True)
class EvalConfig:
    """Every knob of the experiment; invalid values are refused at construction, by name."""

    seeds: tuple[int, ...] = (0, 1, 2)
    clients: tuple[ClientSpec, ...] = DEFAULT_CLIENTS
    # data (fixed across seeds)
    n_client_pairs: int = 500
    n_test_pairs: int = 150
    n_public_pairs: int = 240
    n_calibration: int = 60
    n_train_prompts: int = 96
    n_eval_prompts: int = 90
    n_sft: int = 600
    # reference policy
    warm_start_steps: int = 300
    # reward models
    epsilon: float = 8.0
    delta: float = 1e-5
    rm_epoch_factor: float = 1.0
    fedavg_rounds: int = 5
    fedavg_local_epochs: int = 3
    central_epochs: int = 30
    # GRPO: one budget for every method
    grpo_steps: int = 40
    group_size: int = 4
    per_device_batch: int = 8
    learning_rate: float = 2e-3
    beta: float = 0.04
    max_completion_length: int = 24
    # router
    router_epochs: int = 300

    def __post_init__(self) -> None:
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise EvalConfigError(f"seeds must be a non-empty tuple of distinct integers, got {self.seeds!r}")
        names = [c.name for c in self.clients]
        if len(names) < 2 or len(set(names)) != len(names):
            raise EvalConfigError(f"clients must name at least 2 distinct clients, got {names}")
        from corpus.styles import STYLES

        for c in self.clients:
            if c.style not in STYLES:
                raise EvalConfigError(f"client {c.name!r}: style {c.style!r} not in {sorted(STYLES)}")
            if c.arch not in ARCHS:
                raise EvalConfigError(f"client {c.name!r}: arch {c.arch!r} not in {ARCHS}")
        at_least = {"n_client_pairs": 8, "n_test_pairs": 2, "n_public_pairs": 6, "n_calibration": 2,
                    "n_train_prompts": 1, "n_eval_prompts": 3, "n_sft": 1, "warm_start_steps": 1,
                    "fedavg_rounds": 1, "fedavg_local_epochs": 1, "central_epochs": 1, "grpo_steps": 1,
                    "group_size": 2, "per_device_batch": 2, "max_completion_length": 1, "router_epochs": 1}
        for name, low in at_least.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise EvalConfigError(f"EvalConfig.{name} must be an integer >= {low}, got {value!r}")
        if self.per_device_batch % self.group_size:
            raise EvalConfigError(f"EvalConfig.per_device_batch={self.per_device_batch} must be a multiple of "
                                  f"group_size={self.group_size}")
        if not 0 < self.delta < 1.0 / self.n_client_pairs:
            raise EvalConfigError(f"EvalConfig.delta={self.delta:g} must be in (0, 1/n_client_pairs)")
        for name in ("epsilon", "rm_epoch_factor", "learning_rate", "beta"):
            if not getattr(self, name) > 0:
                raise EvalConfigError(f"EvalConfig.{name} must be > 0, got {getattr(self, name)!r}")

    # -- presets -----------------------------------------------------------------------------------
    @classmethod
    def full(cls) -> EvalConfig:
        return cls()

    @classmethod
    def quick(cls) -> EvalConfig:
        return cls(n_client_pairs=240, n_test_pairs=80, n_public_pairs=120, n_calibration=40, n_train_prompts=48,
                   n_eval_prompts=45, n_sft=300, warm_start_steps=150, rm_epoch_factor=0.5, fedavg_rounds=3,
                   fedavg_local_epochs=2, central_epochs=15, grpo_steps=20, router_epochs=150)

    @classmethod
    def smoke(cls) -> EvalConfig:
        tiny = tuple(ClientSpec(c.name, c.style, "frozen-mlp" if c.arch == "lora-minilm" else c.arch)
                     for c in DEFAULT_CLIENTS)
        return cls(seeds=(0,), clients=tiny, n_client_pairs=24, n_test_pairs=12, n_public_pairs=24,
                   n_calibration=12, n_train_prompts=6, n_eval_prompts=12, n_sft=48, warm_start_steps=30,
                   delta=1e-3, rm_epoch_factor=0.25, fedavg_rounds=2, fedavg_local_epochs=1, central_epochs=3,
                   grpo_steps=2, per_device_batch=4, max_completion_length=12, router_epochs=20)

    def replace(self, **changes: Any) -> EvalConfig:
        """A copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
