"""The server's training run end to end on one machine, with simulated agents on a real StateStore.

Real CKKS (ckks mode), real calibration/router/score rounds, a real LearnedRouter fit, real TRL
GRPO on a tiny offline VLM. Agents are threads that answer tasks straight through the store (the
HTTP layer is covered by the service's own tests; the full multi-process run by the demo).
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.pki import make_pki
from PIL import Image
from test_rounds_coordinator import AGENTS, CALIBRATION, World, features

from corpus.dataset import dataset_info
from corpus.importer import import_table
from crypto.signing import SigningKey
from server.admission import AdmissionControl, RateLimiter, RevocationList
from server.errors import ConfigError, TrainingError
from server.router import LearnedRouter
from server.services import ServicePolicy, Services
from server.trainer import TrainingSection, run_training
from server.training_data import DataSection
from server.vlm import build_small_vlm

pytestmark = pytest.mark.slow


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[World, Services]]:
    world = World(tmp_path, mode="ckks")  # agents self-reported calibration; the server measures its own
    pki = make_pki(tmp_path / "pki")
    policy = ServicePolicy(consortium="testnet", digest="d" * 64, privacy_mode="ckks", max_epsilon=8.0,
                           max_delta=1e-5, max_body_bytes=2_000_000, max_items=4096, requests_per_s=100, burst=100,
                           score_min=-100, score_max=100, out_of_range="refuse", allowed_identities=None)
    assert world.owner is not None
    services = Services(policy=policy, state=world.state, audit=world.audit, signing_key=SigningKey.generate(),
                        admission=AdmissionControl(consortium="testnet",
                                                   revocations=RevocationList(pki.crl, pki.ca_cert),
                                                   rate_limiter=RateLimiter(100, 100)),
                        privacy=world.fusion)
    yield world, services
    world.close()


def test_training_run_calibrates_fits_router_and_trains_on_the_fused_reward(
        setup: tuple[World, Services], tmp_path: Path) -> None:
    world, services = setup
    for agent in AGENTS:
        world.run_agent(agent)
    config = TrainingSection(
        model_path=build_small_vlm(tmp_path / "policy", seed=0), output_dir=tmp_path / "out", quorum=2,
        deadline_s=20, enrol_timeout_s=5, n_calibration=12, n_public_pairs=16, n_prompts=4, group_size=2,
        per_device_batch=4, max_steps=2, max_completion_length=8, learning_rate=1e-2, router="learned",
    )
    report = run_training(services, config, features=features, show_progress=False)

    assert sorted(report.agents) == sorted(AGENTS)
    for agent in AGENTS:  # measured from what each agent sent on the calibration batch
        assert report.calibration[agent]["std"] > 0
        assert abs(report.calibration[agent]["mean"] - CALIBRATION[agent][0]) < 2 * CALIBRATION[agent][1]
        stored = json.loads(world.state.agent(agent)["calibration"])  # type: ignore[index]
        assert stored["source"] == "server-measured"
    assert report.router_fit is not None and report.router_fit["n_train"] + report.router_fit["n_val"] == 16
    saved = LearnedRouter.load(tmp_path / "out" / "router.safetensors", expected_digest=report.router_digest)
    assert saved.agents == tuple(sorted(AGENTS))

    actions = world.audit.actions()
    for action in ("training.started", "agent.calibration.measured", "round.collected", "router.updated",
                   "round.fused", "grpo.step", "training.finished"):
        assert action in actions, action
    assert actions.index("router.updated") < actions.index("round.fused")
    updated = next(d for _, a, d in world.audit.entries if a == "router.updated")
    assert updated["digest"] == report.router_digest
    fused = [d for _, a, d in world.audit.entries if a == "round.fused"]
    assert all(d["router_digest"] == report.router_digest and len(d["agents_used"]) == 3 for d in fused)

    steps = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    rounds = [json.loads(line) for line in (tmp_path / "out" / "rounds.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2] and len(rounds) == 2
    for step, rnd in zip(steps, rounds, strict=True):
        assert step["kl"] >= 0 and step["agents_answered"] == 3 and step["round_skipped"] == 0
        assert step["reward"] == pytest.approx(rnd["reward_mean"], abs=1e-4)  # GRPO trained on the fused reward
        assert sum(v for k, v in step.items() if k.startswith("router_weight/")) == pytest.approx(1.0, abs=1e-4)
    assert report.grpo is not None and report.grpo.lora_delta_norm > 0


def test_training_refuses_to_start_without_quorum(setup: tuple[World, Services], tmp_path: Path) -> None:
    world, services = setup
    config = TrainingSection(model_path=tmp_path, output_dir=tmp_path / "out", quorum=4, enrol_timeout_s=0.2)
    started = time.monotonic()
    with pytest.raises(TrainingError, match="only 3 agents enrolled and live .* quorum is 4"):
        run_training(services, config, features=features, sleep=lambda _s: time.sleep(0.05), show_progress=False)
    assert time.monotonic() - started < 5


def _import(tmp: Path, name: str, kind: str, rows: list[dict[str, str]]) -> Path:
    """A dataset made from a CSV and images of unusual sizes, as `mor data import` makes it."""
    images = tmp / f"{name}-images"
    images.mkdir()
    for i, size in enumerate(((512, 384), (97, 211), (33, 33), (640, 128))):
        Image.new("RGB", size, (30 * i, 120, 200 - 40 * i)).save(images / f"scan{i}.png")
    table = tmp / f"{name}.csv"
    with table.open("w", newline="", encoding="utf-8") as sink:
        writer = csv.DictWriter(sink, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return import_table(table, images, tmp / name, kind=kind).path


def test_training_runs_on_the_consortiums_own_datasets_and_audits_them(
        setup: tuple[World, Services], tmp_path: Path) -> None:
    world, services = setup
    for agent in AGENTS:
        world.run_agent(agent)
    domains = ("radiology", "dermatology")
    prompts = _import(tmp_path, "prompts", "prompts", [
        {"image": f"scan{i % 4}.png", "question": f"what does finding {i} show?", "domain": domains[i % 2]}
        for i in range(4)])
    pairs = [{"image": f"scan{i % 4}.png", "question": f"is lesion {i} benign?", "domain": domains[i % 2],
              "chosen": f"benign, {'well' if i % 2 else 'clearly'} circumscribed", "rejected": "x" * (i + 1)}
             for i in range(6)]
    calibration = _import(tmp_path, "calibration", "pairs", pairs[:3])
    router_pairs = _import(tmp_path, "router", "pairs", pairs)
    config = TrainingSection(
        model_path=build_small_vlm(tmp_path / "policy", seed=0), output_dir=tmp_path / "out", quorum=2,
        deadline_s=20, enrol_timeout_s=5, group_size=2, per_device_batch=4, max_steps=2, max_completion_length=8,
        data=DataSection(prompts=prompts, calibration=calibration, router_pairs=router_pairs), router="learned",
    )
    report = run_training(services, config, features=features, show_progress=False)

    loaded = {d["role"]: d for _, a, d in world.audit.entries if a == "data.loaded"}
    assert set(loaded) == {"prompts", "calibration", "router_pairs"}
    assert loaded["prompts"]["count"] == 4 and loaded["prompts"]["domains"] == {"radiology": 2, "dermatology": 2}
    assert loaded["calibration"]["count"] == 3 and loaded["router_pairs"]["count"] == 6
    assert loaded["router_pairs"]["sha256"] == dataset_info(router_pairs).digest  # what an auditor can recheck
    assert {d["role"]: d["sha256"] for d in world.state.list_datasets()} == {r: d["sha256"] for r, d in loaded.items()}
    collected = [d for _, a, d in world.audit.entries if a == "round.collected"]
    assert len(collected) == 2 and report.router_fit is not None  # calibration (6 answers) and router rounds
    assert report.grpo is not None and len(report.grpo.steps) == 2


def test_a_broken_dataset_is_refused_before_any_member_is_asked(setup: tuple[World, Services], tmp_path: Path) -> None:
    world, services = setup
    (tmp_path / "empty").mkdir()
    config = TrainingSection(model_path=tmp_path, output_dir=tmp_path / "out", enrol_timeout_s=5,
                             data=DataSection(router_pairs=tmp_path / "empty"))
    with pytest.raises(ConfigError, match=r"\[data\]\.router_pairs: .*empty"):
        run_training(services, config, features=features, show_progress=False)
    assert world.audit.entries == []  # no round opened, nothing asked
