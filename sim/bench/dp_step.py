"""Section 3 — what DP-SGD costs per training step, per reward-model architecture, as members run it.

For each architecture — the three built-ins and the two Hugging Face families (checkpoints built
here offline, :mod:`sim.bench.hf_checkpoints`) — the *identical* batch of preference pairs goes
through optimiser steps in several ways, back to back in the same repeat:

* ``non-private``: the baseline — plain SGD on the mean Bradley–Terry loss;
* ``production``: exactly what :func:`client_agent.dp.train_private` runs for this architecture
  (:func:`client_agent.dp.step.privatise` and :meth:`~client_agent.dp.step.PrivateParts.step`,
  the shared code): the architecture's clipping mode (``clipping = "auto"``), Gaussian noise and
  the Poisson draw of the batch from the OS CSPRNG (sum-of-4 hardened noise). The draw picks
  the same fixed batch (sampling rate 1), so every mode trains on the same pairs; its cost is in;
* the other clipping modes (``flat``, ``ghost``, ``bk``) with the same CSPRNG noise, where the
  architecture supports them (otherwise a note says why: no number);
* the production clipping mode with Opacus's seedable PRNG noise (the pilot path) — the contrast
  that shows what the secure noise itself costs.

Reported per mode: seconds per step and extra peak RSS of a step (:mod:`sim.bench.memory`), each
as a ratio to the non-private step timed in the same repeat (:func:`sim.bench.stats.paired`).
``frozen-mlp``'s ratio depends on the batch (its secure noise is a fixed cost per step, its step
is cheap), so the full run also times its production step at 64, 1,024 and 2,048 pairs.
Each sample times several consecutive steps (at least ~0.2 s of the baseline) so a 10 ms step is
not one timer tick; the order of the modes alternates between repeats. torch runs on one
intra-op thread here (both sides), and the figure is the process's CPU time per step — on one
thread, the step's time on an idle core. Why not wall time: on a shared machine, wall time
measures the other tenants (measured here at load 7 on 2 cores: per-repeat ratios of one mode
from 0.99x to 1.86x); the wall-clock figures are kept in each figure's ``extra``.

A measurement that fails is never a figure: an unavailable alternative becomes a note; a failed
production step, or an unmeasurable baseline, fails the section (:class:`BenchMeasurementError`).
Models are untrained (seeded): a step costs the same whatever the weights.
"""

from __future__ import annotations

import contextlib
import copy
import math
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

from client_agent.dp.step import PrivateParts, privatise, resolve_clipping
from client_agent.rewards import BradleyTerryLoss, FrozenMLPReward, LoraMiniLMReward, RewardModel, TinyVLTReward
from sim.bench.memory import peak_extra_mib
from sim.bench.stats import Figure, SectionResult, paired, timed
from sim.errors import BenchMeasurementError

SECTION = "3 dp"
Step = Callable[[], None]
NOISE_MULTIPLIER, MAX_GRAD_NORM = 1.0, 1.0
MIN_SAMPLE_S = {False: 0.2, True: 0.01}  # (by smoke) each timed sample runs steps for this much baseline time


def _hf(kind: str) -> Callable[[Path, bool], RewardModel]:
    def build(workdir: Path, smoke: bool) -> RewardModel:
        from client_agent.rewards.registry import build_reward_model
        from sim.bench.hf_checkpoints import build_text_checkpoint, build_vlm_checkpoint

        maker = build_text_checkpoint if kind == "hf-text" else build_vlm_checkpoint
        path = maker(workdir / kind, smoke=smoke)
        params: dict[str, Any] = {"path": str(path)} | ({"max_len": 64} if kind == "hf-text" else {})
        return build_reward_model(kind, params)

    return build


@dataclass(frozen=True)
class Arch:
    """How the bench builds an architecture, the pairs per step (full run, smoke run), and more batch
    sizes at which the full run times the production step alone (where the ratio depends on it)."""

    build: Callable[[Path, bool], RewardModel]
    batch: tuple[int, int]
    sweep: tuple[int, ...] = ()


ARCHS: dict[str, Arch] = {
    "frozen-mlp": Arch(lambda _, smoke: FrozenMLPReward(hidden=128), (256, 16), sweep=(64, 1024, 2048)),
    "tiny-vlt": Arch(lambda _, smoke: TinyVLTReward(), (32, 8)),
    "lora-minilm": Arch(lambda _, smoke: LoraMiniLMReward.from_pretrained(num_layers=1 if smoke else None), (16, 4)),
    "hf-text": Arch(_hf("hf-text"), (16, 4)),
    "hf-vlm": Arch(_hf("hf-vlm"), (16, 4)),
}
SMOKE_ARCHS = ("frozen-mlp", "tiny-vlt", "hf-text")
PRODUCTION = "production"


@dataclass(frozen=True)
class Mode:
    """One way to run the step: ``clipping`` (flat/ghost/bk) and whether the noise is the CSPRNG's."""

    clipping: str
    secure: bool
    production: bool = False

    @property
    def label(self) -> str:
        noise = "CSPRNG" if self.secure else "PRNG"
        return f"{self.clipping}+{noise}" + (" [production]" if self.production else "")


def modes_for(model: RewardModel) -> list[Mode]:
    """Production first, then the other clipping modes (CSPRNG), then production clipping with PRNG noise."""
    chosen = resolve_clipping(model, "auto")
    others = [Mode(m, True) for m in ("flat", "ghost", "bk") if m != chosen]
    return [Mode(chosen, True, production=True), *others, Mode(chosen, False)]


@contextlib.contextmanager
def _single_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _plain_step(model: RewardModel, batch: Sequence[torch.Tensor]) -> Step:
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    criterion = BradleyTerryLoss()
    model.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        criterion(model(*batch)).backward()
        optimizer.step()

    return step


def _private_step(model: RewardModel, batch: Sequence[torch.Tensor], mode: Mode) -> Step:
    """The training loop's body as :func:`train_private` runs it, plus the step's Poisson draw."""
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    loader = DataLoader(TensorDataset(*batch), batch_size=int(batch[0].shape[0]))  # rate 1: the whole batch
    parts: PrivateParts = privatise(model=model, optimizer=optimizer, loader=loader, secure=mode.secure,
                                    accountant="prv", clipping=mode.clipping, max_grad_norm=MAX_GRAD_NORM,
                                    noise={"noise_multiplier": NOISE_MULTIPLIER})
    sampler = parts.loader.batch_sampler
    if sampler is None:
        raise BenchMeasurementError(f"{mode.label}: the DP loader has no batch sampler to draw from")

    def step() -> None:
        next(iter(sampler))  # the Poisson draw of this step (CSPRNG or PRNG); the batch itself is fixed
        parts.step(batch)

    return step


@dataclass(frozen=True)
class Sample:
    """One timed sample: CPU and wall seconds per step, and the extra peak RSS (MiB) of those steps."""

    cpu: float
    wall: float
    mib: float | None


def _measure(step: Step, number: int) -> Sample:
    """Run ``number`` steps; CPU seconds (this process, all threads) and wall seconds per step, peak RSS."""
    seconds: list[float] = []

    def run() -> None:
        start = time.process_time()
        seconds.append(timed(step, number=number))
        seconds.append((time.process_time() - start) / number)

    _, mib = peak_extra_mib(run)
    wall, cpu = seconds
    return Sample(cpu, wall, mib)


def _why(exc: Exception) -> str:
    """One line saying why a mode could not run (Opacus's messages for two known limits, explained)."""
    text = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    if isinstance(exc, AttributeError) and "_norm_sample" in str(exc):
        return ("Opacus 1.6 ghost clipping computes no norm for an nn.Linear whose input has more than 3 "
                f"dimensions (here [pairs, answers, tokens, width]) [{text}]")
    if "Parameter tying" in str(exc) or "called twice" in str(exc):
        return f"the model runs its layers once per answer (2 calls per forward); ghost norms cannot split it [{text}]"
    return text


def _arch_figures(name: str, model: RewardModel, batch: Sequence[torch.Tensor], modes: Sequence[Mode], *,
                  repeats: int, smoke: bool, notes: list[str]) -> list[Figure]:
    """The figures of one architecture at one batch size; BenchMeasurementError if production or the baseline failed."""
    baseline = _plain_step(copy.deepcopy(model), batch)
    steps: dict[str, Step] = {}
    production = ""
    for mode in modes:
        try:
            step = _private_step(copy.deepcopy(model), batch, mode)
            step()  # warm-up: hooks, first allocations
            steps[mode.label] = step
        except BenchMeasurementError:
            raise
        except Exception as exc:  # noqa: BLE001 - an unsupported layer is a finding, not a crash
            reason = _why(exc)
            if mode.production:
                raise BenchMeasurementError(f"{name}: the production DP step failed: {reason}") from exc
            notes.append(f"{name}: {mode.label} unavailable, no figure: {reason}")
        if mode.production:
            production = mode.label
    try:
        baseline()
        number = max(1, math.ceil(MIN_SAMPLE_S[smoke] / max(timed(baseline), 1e-6)))
    except Exception as exc:  # noqa: BLE001 - no baseline, no ratio
        raise BenchMeasurementError(f"{name}: the non-private step failed: {_why(exc)}") from exc
    order = ["non-private", *steps]
    samples: dict[str, list[Sample]] = {label: [] for label in order}
    runners = {"non-private": baseline, **steps}
    for r in range(repeats):
        for label in list(order if r % 2 == 0 else order[::-1]):
            try:
                samples[label].append(_measure(runners[label], number))
            except Exception as exc:  # noqa: BLE001 - recorded, and that mode reports nothing
                if label in ("non-private", production):
                    raise BenchMeasurementError(f"{name}: {label} step failed in repeat {r + 1}: {exc}") from exc
                notes.append(f"{name}: {label} failed in repeat {r + 1}, no figure: {type(exc).__name__}: {exc}")
                runners.pop(label)
                order.remove(label)
                samples.pop(label)
    base = samples["non-private"]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    extra = {"batch_pairs": int(batch[0].shape[0]), "trainable_params": trainable, "steps_per_sample": number}
    figures: list[Figure] = []
    for label in order[1:]:
        mine = samples[label]
        wall = paired(SECTION, "wall", "s", [s.wall for s in mine], "non-private", [s.wall for s in base])
        figures.append(paired(SECTION, f"{name} {label} step", "s", [s.cpu for s in mine], "non-private",
                              [s.cpu for s in base], production=label == production, clock="process CPU time",
                              wall_s=wall.value, wall_baseline_s=wall.baseline, wall_ratio=wall.ratio, **extra))
        if any(s.mib is None for s in mine + base):
            notes.append(f"{name}: {label} peak memory not measurable here (no /proc/self/clear_refs): no figure")
            continue
        # +1 MiB on both sides: a step that fits in already-resident pages would otherwise divide by 0
        figures.append(paired(SECTION, f"{name} {label} peak mem", "MiB", [float(s.mib or 0) + 1.0 for s in mine],
                              "non-private", [float(s.mib or 0) + 1.0 for s in base],
                              production=label == production, **extra))
    return figures


def run(*, repeats: int, smoke: bool = False, seed: int = 0) -> SectionResult:
    from corpus.builders import build_client_pairs

    names = SMOKE_ARCHS if smoke else tuple(ARCHS)
    figures: list[Figure] = []
    notes: list[str] = [f"noise multiplier {NOISE_MULTIPLIER}, max_grad_norm {MAX_GRAD_NORM}; torch on 1 intra-op "
                        "thread; production = clipping 'auto' with CSPRNG noise and Poisson draw (what agents run)"]
    torch.manual_seed(seed)
    with warnings.catch_warnings(), _single_thread(), tempfile.TemporaryDirectory(prefix="mor-bench-dp-") as tmp:
        warnings.filterwarnings("ignore", message=".*(Secure RNG|Full backward hook|Optimal order|poisson).*")
        for name in tqdm(names, desc="bench 3 dp", unit="arch", disable=None):
            arch = ARCHS[name]
            model = arch.build(Path(tmp), smoke)
            modes = modes_for(model)
            for batch_size in (arch.batch[1],) if smoke else (arch.batch[0], *arch.sweep):
                batch = model.featurize(build_client_pairs("medical", batch_size, seed=seed))
                label = name if batch_size == (arch.batch[1] if smoke else arch.batch[0]) else f"{name} B={batch_size}"
                chosen = modes if label == name else modes[:1]  # a sweep point: the production step only
                figures.extend(_arch_figures(label, model, batch, chosen, repeats=repeats, smoke=smoke, notes=notes))
    return SectionResult(figures, notes)
