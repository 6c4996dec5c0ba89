"""Section 3 — what DP-SGD costs per training step, per reward-model architecture.

For each architecture the *identical* batch of preference pairs goes through one optimiser
step three ways, in the same repeat: non-private (the baseline: plain SGD on the mean
Bradley–Terry loss), Opacus with standard per-sample gradients (``hooks`` mode, flat
clipping — what :func:`client_agent.dp.train_private` runs by default) and Opacus ghost
clipping (``ghost`` mode: per-sample gradient *norms* without materialising per-sample
gradients) where the architecture's layers support it. Reported: seconds per step and extra
peak RSS per step (:mod:`sim.bench.memory`), each as a ratio to the non-private step.

Models are built with their default sizes and fixed seeds and are untrained (the cost of a
step does not depend on how good the model is). ``secure_mode`` is off here: the benchmark
measures clipping and noise, not the CSPRNG (named in the report).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

from client_agent.rewards import BradleyTerryLoss, FrozenMLPReward, LoraMiniLMReward, RewardModel, TinyVLTReward
from sim.bench.memory import peak_extra_mib
from sim.bench.stats import Figure, SectionResult, paired, timed

SECTION = "3 dp"
Step = Callable[[], None]
# architecture -> (factory(smoke), pairs per batch (full, smoke))
ARCHS: dict[str, tuple[Callable[[bool], RewardModel], tuple[int, int]]] = {
    "frozen-mlp": (lambda smoke: FrozenMLPReward(hidden=128), (256, 16)),
    "tiny-vlt": (lambda smoke: TinyVLTReward(), (32, 8)),
    "lora-minilm": (lambda smoke: LoraMiniLMReward.from_pretrained(num_layers=1 if smoke else None), (16, 4)),
}
SMOKE_ARCHS = ("tiny-vlt",)
MODES = ("opacus-hooks", "opacus-ghost")


def _plain_step(model: RewardModel, batch: Sequence[torch.Tensor]) -> Step:
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    criterion = BradleyTerryLoss()
    model.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        criterion(model(*batch)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _private_step(model: RewardModel, batch: Sequence[torch.Tensor], mode: str) -> Step:
    from opacus import PrivacyEngine

    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    loader = DataLoader(TensorDataset(*batch), batch_size=int(batch[0].shape[0]))
    engine = PrivacyEngine(secure_mode=False)
    model.train()
    ghost = mode == "opacus-ghost"
    wrapped: Any = engine.make_private(
        module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=1.0, max_grad_norm=1.0,
        poisson_sampling=False, clipping="flat", grad_sample_mode="ghost" if ghost else "hooks",
        **({"criterion": BradleyTerryLoss()} if ghost else {}),
    )
    if ghost:
        private, dp_optimizer, criterion, _ = wrapped
    else:
        (private, dp_optimizer, _), criterion = wrapped, BradleyTerryLoss()

    def step() -> None:
        dp_optimizer.zero_grad(set_to_none=True)
        criterion(private(*batch)).backward()
        dp_optimizer.step()
        dp_optimizer.zero_grad(set_to_none=True)

    return step


def _measure(step: Step) -> tuple[float, float | None]:
    _, mib = peak_extra_mib(lambda: None)  # settle the allocator before timing
    seconds: list[float] = []
    _, mib = peak_extra_mib(lambda: seconds.append(timed(step)))
    return seconds[0], mib


def run(*, repeats: int, smoke: bool = False, seed: int = 0) -> SectionResult:
    from corpus.builders import build_client_pairs

    names = SMOKE_ARCHS if smoke else tuple(ARCHS)
    figures: list[Figure] = []
    notes: list[str] = ["secure_mode off (no CSPRNG) in this benchmark; noise_multiplier 1.0, max_grad_norm 1.0"]
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(Secure RNG|Full backward hook|Optimal order|poisson).*")
        for name in tqdm(names, desc="bench 3 dp", unit="arch", disable=None):
            factory, (full_b, smoke_b) = ARCHS[name]
            batch_size = smoke_b if smoke else full_b
            base = factory(smoke)
            batch = base.featurize(build_client_pairs("medical", batch_size, seed=seed))
            steps: dict[str, Step] = {"non-private": _plain_step(copy.deepcopy(base), batch)}
            for mode in MODES:
                try:
                    steps[mode] = _private_step(copy.deepcopy(base), batch, mode)
                    steps[mode]()  # warm-up: hooks, first allocations
                except Exception as exc:  # noqa: BLE001 - an unsupported layer is a finding, not a crash
                    steps.pop(mode, None)
                    notes.append(f"{name}: {mode} unavailable: {type(exc).__name__}: {str(exc)[:160]}")
            steps["non-private"]()
            samples: dict[str, list[tuple[float, float | None]]] = {m: [] for m in steps}
            for _ in range(repeats):
                for mode, step in steps.items():
                    samples[mode].append(_measure(step))
            base_t = [t for t, _ in samples["non-private"]]
            base_m = [m for _, m in samples["non-private"]]
            params = sum(p.numel() for p in base.parameters() if p.requires_grad)
            for mode in MODES:
                if mode not in samples:
                    continue
                times = [t for t, _ in samples[mode]]
                figures.append(paired(SECTION, f"{name} {mode} step", "s", times, "non-private", base_t,
                                      batch_pairs=batch_size, trainable_params=params))
                mems = [m for _, m in samples[mode]]
                if all(m is not None for m in mems + base_m):
                    # +1 MiB on both sides: a step that fits in already-resident pages would otherwise divide by 0
                    figures.append(paired(SECTION, f"{name} {mode} peak mem", "MiB",
                                          [float(m) + 1.0 for m in mems if m is not None], "non-private",
                                          [float(m) + 1.0 for m in base_m if m is not None], batch_pairs=batch_size))
    return SectionResult(figures, notes)
