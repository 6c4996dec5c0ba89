"""How far does ONE malicious member move the fused reward? (``python -m sim.eval.robustness``)

The degradation curve ``docs/robustness.md`` publishes, from real components and no model
training: the real routers (uniform; learned, fitted by :meth:`LearnedRouter.fit` on public
pairs; :class:`~server.router.capped.CappedRouter`), the real fusion of ``tls-only``/``ckks``
(:func:`server.fusion.fuse_vectors`, with the policy's range check and
:class:`~server.robust_fusion.RobustFusion`) and real calibration
(:class:`wire.calibration.Calibration` measured on a public calibration batch).

The world (seeded, seconds): prompts of three domains; each prompt's answers have a hidden
true utility ``u``. Honest member ``k`` scores ``offset_k + scale_k * (u + noise)`` — its own
scale and offset, little noise on its own domain, more elsewhere (so the learned router has
something to learn). Member 0 is the attacker, and the expert of domain 0. It behaves on
public rounds (calibration, router pairs: they are published by digest, so it can always tell
them apart) and attacks score rounds, staying inside the policy's score range so no range
check refuses it:

* ``sign-flip``: its scores mirrored around its calibrated mean;
* ``scale-x100``: its deviations from its mean multiplied by 100 (calibrated honestly before);
* ``boost-domain``: +5 of its standard deviations on every answer to domain-1 prompts;
* ``boost-trait``: +5 standard deviations on answers with a trait unrelated to quality (25%);
* ``random``: noise of its own scale, unrelated to the answers.

Per GRPO-like group (one prompt, ``group_size`` answers) it measures (a) Kendall's tau-b
between the fused rewards with the attack and the same method's fusion with the attacker
honest, and (b) the change in GRPO advantage (fused reward standardised within its group) of
the answer the attacker ranks first: how much more the policy would be pushed towards it.
Also, per method without any attack, tau-b to the true utility: what robustness costs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch

from server.fusion import FusionInput, ScoreRange, fuse_vectors
from server.robust_fusion import NO_ROBUSTNESS, RobustFusion
from server.router import CappedRouter, LearnedRouter, RouterBase, RouterFitConfig, RouterTrainingSet, UniformRouter
from wire.calibration import Calibration

ATTACKS = ("sign-flip", "scale-x100", "boost-domain", "boost-trait", "random")
METHODS = ("uniform", "learned", "learned + cap", "learned + clip", "learned + trimmed", "learned + median",
           "learned + robust")
DOMAINS = 3
FEATURE_DIM = 8
SCALES = (0.05, 0.8, 1.0, 0.3, 1.2, 0.1, 0.5, 0.9)  # member k's score scale; member 0 (the attacker) first
OFFSETS = (0.0, 1.0, -1.0, 0.5, -0.5, 2.0, 0.0, -0.5)
NOISE_OWN, NOISE_OTHER = 0.4, 1.2  # noise on the member's own domain / elsewhere, in units of u
BOOST_SD, TRAIT_RATE, BOOSTED_DOMAIN = 5.0, 0.25, 1


@dataclass(frozen=True)
class RobustnessConfig:
    """One run's settings; :meth:`quick` is the smoke test's (seconds)."""

    members: tuple[int, ...] = (3, 8)
    groups: int = 600
    group_size: int = 8
    calibration_items: int = 256
    router_pairs: int = 900
    clip_z: float = 3.0
    cap_share: float = 1.2  # max_member_weight = cap_share / members: nobody above 1.2x an equal share (< 1/2)
    seed: int = 0
    score_range: tuple[float, float] = (-10.0, 10.0)
    fit_epochs: int = 300

    @classmethod
    def quick(cls) -> RobustnessConfig:
        return cls(groups=120, router_pairs=300, fit_epochs=60)


@dataclass
class World:
    """Hidden utilities and every member's honest raw scores for one population of ``members``."""

    agents: tuple[str, ...]
    features: torch.Tensor  # [G * n, FEATURE_DIM]: each answer carries its prompt's features
    domain: torch.Tensor  # [G * n] prompt domain per answer
    utility: torch.Tensor  # [G * n] hidden true utility
    trait: torch.Tensor  # [G * n] bool: the answer has the attacker's pet trait
    honest: dict[str, torch.Tensor]  # raw scores per member on the score-round answers
    calibrations: dict[str, Calibration] = field(default_factory=dict)


def _prompts(gen: torch.Generator, n_prompts: int, per_prompt: int) -> tuple[torch.Tensor, torch.Tensor]:
    domain = torch.randint(0, DOMAINS, (n_prompts,), generator=gen)
    features = torch.randn(n_prompts, FEATURE_DIM, generator=gen, dtype=torch.float64) * 0.3
    features[:, :DOMAINS] += torch.nn.functional.one_hot(domain, DOMAINS).to(torch.float64)
    return features.repeat_interleave(per_prompt, 0), domain.repeat_interleave(per_prompt)


def _score(gen: torch.Generator, k: int, utility: torch.Tensor, domain: torch.Tensor,
           score_range: tuple[float, float]) -> torch.Tensor:
    """Member ``k``'s honest raw scores: its scale and offset, its noise; bounded like a real reward head."""
    noise = torch.where(domain == k % DOMAINS, NOISE_OWN, NOISE_OTHER)
    raw = OFFSETS[k] + SCALES[k] * (utility + noise * torch.randn(utility.shape, generator=gen, dtype=torch.float64))
    return raw.clamp(*score_range)


def build_world(members: int, config: RobustnessConfig) -> tuple[World, LearnedRouter]:
    """Score rounds, calibration measured on a public batch, and the learned router fitted on public pairs."""
    gen = torch.Generator().manual_seed(config.seed * 1000 + members)
    agents = tuple(f"m{k}" for k in range(members))
    features, domain = _prompts(gen, config.groups, config.group_size)
    utility = torch.randn(len(domain), generator=gen, dtype=torch.float64)
    trait = torch.rand(len(domain), generator=gen) < TRAIT_RATE
    world = World(agents, features, domain, utility, trait,
                  {a: _score(gen, k, utility, domain, config.score_range) for k, a in enumerate(agents)})
    _, cal_domain = _prompts(gen, config.calibration_items, 1)
    cal_u = torch.randn(len(cal_domain), generator=gen, dtype=torch.float64)
    world.calibrations = {a: Calibration.measure(_score(gen, k, cal_u, cal_domain, config.score_range))
                          for k, a in enumerate(agents)}
    pair_x, pair_domain = _prompts(gen, config.router_pairs, 1)
    u = torch.randn(2, len(pair_domain), generator=gen, dtype=torch.float64).sort(dim=0, descending=True).values
    chosen, rejected = ([world.calibrations[a].zscore(_score(gen, k, u[i], pair_domain, config.score_range))
                         for k, a in enumerate(agents)] for i in (0, 1))
    router = LearnedRouter(agents, feature_dim=FEATURE_DIM, seed=config.seed)
    everyone = torch.ones(len(pair_domain), members, dtype=torch.bool)
    router.fit(RouterTrainingSet(agents, pair_x.float(), torch.stack(chosen, 1).float(),
                                 torch.stack(rejected, 1).float(), everyone),
               RouterFitConfig(seed=config.seed, max_epochs=config.fit_epochs, show_progress=False))
    return world, router


def attack(name: str, world: World, config: RobustnessConfig, gen: torch.Generator) -> torch.Tensor:
    """The attacker's (member 0's) submitted raw scores for ``name``, kept inside the score range."""
    s, cal = world.honest[world.agents[0]], world.calibrations[world.agents[0]]
    attacks: dict[str, Callable[[], torch.Tensor]] = {
        "sign-flip": lambda: 2 * cal.mean - s,
        "scale-x100": lambda: cal.mean + 100 * (s - cal.mean),
        "boost-domain": lambda: s + BOOST_SD * cal.std * (world.domain == BOOSTED_DOMAIN),
        "boost-trait": lambda: s + BOOST_SD * cal.std * world.trait,
        "random": lambda: cal.mean + cal.std * torch.randn(s.shape, generator=gen, dtype=torch.float64),
    }
    return attacks[name]().clamp(*config.score_range)


def methods(learned: LearnedRouter, members: int,
            config: RobustnessConfig) -> dict[str, tuple[RouterBase, RobustFusion]]:
    """Each compared method as (router, robust fusion): what a policy's ``[fusion]`` section would build."""
    capped = CappedRouter(learned, config.cap_share / members)
    return {
        "uniform": (UniformRouter(learned.agents), NO_ROBUSTNESS),
        "learned": (learned, NO_ROBUSTNESS),
        "learned + cap": (capped, NO_ROBUSTNESS),
        "learned + clip": (learned, RobustFusion(clip_z=config.clip_z)),
        "learned + trimmed": (learned, RobustFusion(aggregate="trimmed")),
        "learned + median": (learned, RobustFusion(aggregate="median")),
        "learned + robust": (capped, RobustFusion(clip_z=config.clip_z, aggregate="median")),
    }


def fuse(router: RouterBase, robust: RobustFusion, world: World, vectors: dict[str, torch.Tensor],
         config: RobustnessConfig) -> torch.Tensor:
    """The server's own plaintext fusion (tls-only/ckks after decryption) of one score round."""
    inp = FusionInput("score-robustness", world.features, {}, world.calibrations)
    outcome = fuse_vectors(router, inp, {a: v.tolist() for a, v in vectors.items()}, ScoreRange(*config.score_range),
                           {}, 0, robust)
    if outcome.refused or any(r is None for r in outcome.rewards):
        raise RuntimeError(f"the harness's vectors were refused: {outcome.refused}")
    return torch.tensor(outcome.rewards, dtype=torch.float64)


def kendall_tau_b(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per row of ``[G, n]`` ``x`` and ``y``, Kendall's tau-b (1: same order; rows with no untied pair: 0)."""
    sx = torch.sign(x[:, :, None] - x[:, None, :])
    sy = torch.sign(y[:, :, None] - y[:, None, :])
    denominator = ((sx != 0).sum((1, 2)) * (sy != 0).sum((1, 2))).to(torch.float64).sqrt()
    return torch.where(denominator > 0, (sx * sy).sum((1, 2)) / denominator.clamp_min(1), torch.zeros(()))


def advantage(rewards: torch.Tensor) -> torch.Tensor:
    """GRPO's group-relative advantage: rewards standardised within each row (a group)."""
    return (rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + 1e-4)


def run(config: RobustnessConfig, echo: Callable[[str], None] = lambda _: None) -> dict[str, object]:
    """Every members x method x attack cell: ``{"tau", "adv_shift"}``, plus each method's tau to the truth."""
    results: dict[str, object] = {"config": asdict(config), "attacks": list(ATTACKS), "methods": list(METHODS)}
    for members in config.members:
        started = time.perf_counter()
        world, learned = build_world(members, config)
        shape = (config.groups, config.group_size)
        truth = world.utility.view(shape)
        table: dict[str, dict[str, object]] = {}
        for method, (router, robust) in methods(learned, members, config).items():
            honest = fuse(router, robust, world, world.honest, config).view(shape)
            row: dict[str, object] = {"tau_truth": float(kendall_tau_b(honest, truth).mean())}
            for name in ATTACKS:
                sent = attack(name, world, config, torch.Generator().manual_seed(config.seed))
                attacked = fuse(router, robust, world, {**world.honest, world.agents[0]: sent}, config).view(shape)
                top = sent.view(shape).argmax(1, keepdim=True)
                shift = advantage(attacked).gather(1, top) - advantage(honest).gather(1, top)
                row[name] = {"tau": float(kendall_tau_b(attacked, honest).mean()), "adv_shift": float(shift.mean()),
                             "tau_truth": float(kendall_tau_b(attacked, truth).mean())}
            table[method] = row
        results[str(members)] = table
        echo(f"{members} members: {time.perf_counter() - started:.1f} s")
    return results


TABLES = (("tau", "(a) Kendall tau to the same method's fusion with the attacker honest (1 = unmoved)", "{:.3f}"),
          ("adv_shift", "(b) GRPO advantage shift of the attacker's favourite answer (0 = none; in group std)",
           "{:+.2f}"),
          ("tau_truth", "(c) Kendall tau to the true utility (quality; first column without attack)", "{:.3f}"))


def markdown(results: dict[str, object]) -> str:
    """Per population, three tables (a), (b), (c) of :data:`TABLES`: rows methods, columns attacks."""
    config = results["config"]
    assert isinstance(config, dict)
    lines = []
    for members in config["members"]:
        table = results[str(members)]
        assert isinstance(table, dict)
        lines += [f"#### 1 malicious member of {members} (cap = {config['cap_share'] / members:.3g}, "
                  f"clip_z = {config['clip_z']:g})", ""]
        for key, title, fmt in TABLES:
            first = ["no attack"] if key == "tau_truth" else []
            lines += [f"{title}:", "", "| method | " + " | ".join(first + list(ATTACKS)) + " |",
                      "|---|" + "---|" * (len(first) + len(ATTACKS))]
            for method in METHODS:
                row = table[method]
                cells = [fmt.format(row["tau_truth"])] if first else []
                cells += [fmt.format(row[a][key]) for a in ATTACKS]
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim.eval.robustness", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer groups and a shorter router fit (seconds)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=argparse.FileType("w", encoding="utf-8"), help="write every number here")
    args = parser.parse_args(argv)
    config = RobustnessConfig.quick() if args.quick else RobustnessConfig()
    config = RobustnessConfig(**{**asdict(config), "seed": args.seed})
    results = run(config, echo=lambda line: print(line, file=sys.stderr, flush=True))
    print(markdown(results))
    if args.json:
        json.dump(results, args.json, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
