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
    # issue #17: the router options under test (see sim.eval.methods)
    methods: tuple[str, ...] | None = None  # None: every method of sim.eval.methods.methods_for
    heldout_domain: str = "general"  # left out of the *-heldout routers' fit (generalisation check)
    disagreement_penalty: float = 0.5  # lam of mor-cons: mean - lam * std across members
    shrink_kappa: float = 8.0  # evidence count at which a shrunk router's own weights count half
    shrink_bandwidth: float = 0.1
    uniform_kl: float = 0.05  # KL(w || uniform) coefficient of the shrunk/online routers' fits
    online_prompts: int = 60  # public prompts the reference answers for the on-policy router pairs
    online_samples: int = 4  # sampled answers per such prompt
    online_prior_coef: float = 1.0  # pull of the online refinement toward the offline fit
    bootstrap: int = 2000  # paired bootstrap replicates for the confidence intervals
    # production settings
    model_path: str | None = None  # a base VLM checkpoint (`mor model build`); None: the offline toy VLM
    secure_dp: bool = False  # members train with CSPRNG noise, unseeded (production); False: seeded pilot

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
        for name in ("epsilon", "rm_epoch_factor", "learning_rate", "beta", "shrink_kappa", "shrink_bandwidth"):
            if not getattr(self, name) > 0:
                raise EvalConfigError(f"EvalConfig.{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("disagreement_penalty", "uniform_kl", "online_prior_coef"):
            if not 0 <= getattr(self, name) <= 100:
                raise EvalConfigError(f"EvalConfig.{name} must be in [0, 100], got {getattr(self, name)!r}")
        if self.epsilon > 8.0 and self.secure_dp:
            raise EvalConfigError(f"EvalConfig.epsilon={self.epsilon:g}: production DP means epsilon <= 8")
        for name, low in {"online_prompts": 1, "online_samples": 2, "bootstrap": 100}.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise EvalConfigError(f"EvalConfig.{name} must be an integer >= {low}, got {value!r}")
        if self.heldout_domain not in ("medical", "finance", "general"):
            raise EvalConfigError(f"EvalConfig.heldout_domain must be medical, finance or general, "
                                  f"got {self.heldout_domain!r}")
        if self.methods is not None:
            from sim.eval.methods import methods_for

            known = methods_for(self.replace(methods=None))
            unknown = [m for m in self.methods if m not in known]
            if unknown or not self.methods:
                raise EvalConfigError(f"EvalConfig.methods: unknown {unknown or '(none given)'}; choose from "
                                      f"{', '.join(known)}")

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

    def fingerprint(self) -> dict[str, Any]:
        """What a finished (method, seed) cell depends on: everything but the seed list and the row choice."""
        out = self.to_dict()
        for key in ("seeds", "methods", "bootstrap"):
            out.pop(key)
        return out
