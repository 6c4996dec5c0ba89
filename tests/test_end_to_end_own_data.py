"""A consortium on its own data and its own reward models, end to end, as a new user would run it.

Nothing comes from the built-in corpus: a prompt table (JSONL) and every pair table (CSV) are
made from images in other formats and sizes (300x200 JPEG, 16-bit greyscale PNG, BMP forms)
in domains the corpus does not know (radiology, dermatology, claims) and turned into datasets
with ``mor data import`` (tests/own_data.py). Three members each ``mor client train`` a
different kind of reward model under real DP (OS CSPRNG noise, PRV, no pilot): a built-in
(``frozen-mlp``), a local Hugging Face checkpoint (``hf-text``, a tiny random Llama saved with
``save_pretrained``) and an entry-point plugin (``member_rm_plugin:build``). Each is scored on
its own held-out pairs. Then ``mor server run`` aligns the tiny built-in VLM on the imported
prompt, calibration and router datasets (``[data]`` in training.toml) with the three
``mor client run`` agents as real processes over mutual TLS and CKKS: calibration, router fit,
2 GRPO steps at quorum 3. Everything is stopped with SIGTERM, then every audit log (server and
agents) is verified, every receipt reconciled with the server's log, and the server's
``data.loaded`` entries must carry the imported datasets' digests.

Pair accuracy threshold: each member is scored on HELD_OUT = 40 pairs it never trained on; a
scorer no better than chance (p = 0.5 per pair) reaches 30/40 = 0.75 with probability 0.11 %,
so ``accuracy >= 0.75`` separates a learned preference from luck, while leaving DP noise a
wide margin (measured 0.975-1.00). A fresh model of the same architecture is
scored too: an untrained model on this separable signal already ranks the pairs one way or the
other (0.57-0.95 measured here), but with no confidence: its Bradley-Terry loss sits at
log 2 = 0.693; the trained model's held-out loss must be under half of that.

The policy is the shipped ``policies/finance.toml`` (ckks, eps <= 8, no pilot) renamed for this
consortium. The same flow as CLI commands, with measured timings: README, "Your own data, end to end".
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.pki import make_pki
from helpers.procs import REPO_ROOT, free_port, start_agent, write_server_config
from own_data import DOMAINS, write_pair_table, write_prompt_table
from test_rewards_any_arch import PLUGIN, build_tiny_llama

from client_agent.config import load_agent_config
from client_agent.privacy_report import SignedPrivacyReport
from client_agent.rewards.registry import build_reward_model, load_reward_model
from corpus.dataset import dataset_info, load_pair_dataset
from crypto.signing import SigningKey
from mor_cli.main import main
from server.vlm import build_small_vlm
from sim.demo.reconcile import reconcile
from sim.harness import start_server, write_toml

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
TRAIN, HELD_OUT, MIN_ACCURACY = 64, 40, 0.75
GRPO_STEPS = 2
# member (= its domain) -> [model] arch and params (hf-text also gets path = the tiny checkpoint's folder)
MEMBERS: dict[str, tuple[str, dict[str, Any]]] = {
    "radiology": ("frozen-mlp", {"hidden": 16}),
    "dermatology": ("hf-text", {"lora_r": 4, "max_len": 48}),
    "claims": ("member_rm_plugin:build", {"buckets": 64}),
}
AGENT_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _import(table: Path, images: Path, out: Path, kind: str) -> Path:
    assert main(["data", "import", "--table", str(table), "--images", str(images), "--out", str(out),
                 "--kind", kind]) == 0
    assert main(["data", "check", str(out)]) == 0
    return out


def _server_datasets(tmp: Path, images: Path) -> dict[str, Path]:
    """The server's own sets: GRPO prompts, calibration pairs, router pairs (every domain)."""
    return {"prompts": _import(write_prompt_table(tmp / "grpo-prompts.jsonl", images, 6, seed=1), images,
                               tmp / "grpo-prompts", "prompts"),
            "calibration": _import(write_pair_table(tmp / "calibration.csv", images, DOMAINS, 6, seed=2), images,
                                   tmp / "calibration-pairs", "pairs"),
            "router_pairs": _import(write_pair_table(tmp / "router.csv", images, DOMAINS, 12, seed=3), images,
                                    tmp / "router-pairs", "pairs")}


def _member_config(tmp: Path, pki: Any, policy: Path, port: int, name: str, llama: Path) -> Path:
    """`mor client init-config`, then the member's own [model], a small [training] and quick retries."""
    party = pki.issue(name)
    out = tmp / name / "agent.toml"
    assert main(["client", "init-config", "--out", str(out), "--server-url", f"https://127.0.0.1:{port}",
                 "--server-identity", pki.server.identity, "--policy", str(policy), "--cert", str(party.cert),
                 "--key", str(party.key), "--ca", str(pki.ca_cert), "--crl", str(pki.crl),
                 "--data-dir", str(tmp / name / "train"), "--state-dir", str(tmp / name / "state"),
                 "--epsilon", "6", "--delta", "1e-5"]) == 0
    config = tomllib.loads(out.read_text("utf-8"))
    arch, params = MEMBERS[name]
    config["model"].update(arch=arch, params={"path": str(llama), **params} if arch == "hf-text" else params)
    config["training"].update(epochs=4, batch_size=16, lr=0.05)
    config["network"].update(poll_wait_s=5.0, read_timeout_s=30.0, retry_base_s=0.2, retry_max_s=2.0)
    return write_toml(out, config)


def _held_out(config_path: Path) -> dict[str, float]:
    """Pair accuracy and Bradley-Terry loss on the member's held-out pairs: trained vs a fresh model."""
    config = load_agent_config(config_path, check_policy=False)
    pairs = load_pair_dataset(config_path.parent / "held-out").pairs
    entry = config.model.arch if ":" in config.model.arch else None
    out: dict[str, float] = {}
    for label, model in (("trained", load_reward_model(config.model_dir, entry_point=entry)),
                         ("untrained", build_reward_model(config.model.arch, dict(config.model.params)))):
        model.eval()
        with torch.no_grad():
            scores = model(*model.featurize(pairs))
        margin = scores[:, 0] - scores[:, 1]
        out[f"{label}_accuracy"] = float((margin > 0).float().mean())
        out[f"{label}_loss"] = float(-torch.nn.functional.logsigmoid(margin).mean())
    return out


def _privacy(config_path: Path) -> dict[str, Any]:
    """The member's signed privacy report, verified with its own key."""
    config = load_agent_config(config_path, check_policy=False)
    signed = SignedPrivacyReport.from_json(config.privacy_report_path.read_text("utf-8"))
    report = signed.verify(SigningKey.load(config.signing_key_path).verify_key())
    return {"epsilon": report.epsilon, "delta": report.delta, "noise_source": report.noise_source,
            "insecure_pilot": report.insecure_pilot}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Data imported, three members DP-trained, the policy VLM built: everything before the run."""
    tmp = tmp_path_factory.mktemp("own-data")
    started = time.monotonic()
    (tmp / "member_rm_plugin.py").write_text(PLUGIN)
    sys.path.insert(0, str(tmp))
    images = tmp / "images"
    datasets = _server_datasets(tmp, images)
    pki = make_pki(tmp / "pki", consortium="regional-care")
    policy = tmp / "policy.toml"  # the shipped ckks policy (eps <= 8, no pilot) for this consortium, as in the README
    policy.write_text(re.sub(r'(?m)^consortium = .*$', 'consortium = "regional-care"',
                             (REPO_ROOT / "policies" / "finance.toml").read_text("utf-8")), "utf-8")
    port, llama = free_port(), build_tiny_llama(tmp / "tiny-llama")
    configs, accuracy = {}, {}
    for k, name in enumerate(MEMBERS):
        (tmp / name).mkdir()
        for part, n, seed in (("train", TRAIN, 10 + k), ("held-out", HELD_OUT, 20 + k)):  # no shared pair
            table = write_pair_table(tmp / f"{name}-{part}.csv", images, (name,), n, seed=seed)
            _import(table, images, tmp / name / part, "pairs")
        configs[name] = _member_config(tmp, pki, policy, port, name, llama)
        assert main(["client", "train", "--config", str(configs[name]), "--quiet"]) == 0
        accuracy[name] = {**_held_out(configs[name]), **_privacy(configs[name])}
    timings = {"import + DP training": time.monotonic() - started}
    model = build_small_vlm(tmp / "policy-vlm", seed=0)
    timings["policy VLM build"] = time.monotonic() - started - timings["import + DP training"]
    yield {"tmp": tmp, "pki": pki, "policy": policy, "port": port, "configs": configs, "datasets": datasets,
           "accuracy": accuracy, "model": model, "timings": timings}
    sys.path.remove(str(tmp))
    sys.modules.pop("member_rm_plugin", None)


def test_members_trained_under_dp_beat_chance_on_their_own_held_out_pairs(world: dict[str, Any]) -> None:
    print(f"\nheld-out pairs (n = {HELD_OUT} per member): " + json.dumps(world["accuracy"], indent=1))
    for name, result in world["accuracy"].items():
        assert result["epsilon"] <= 6.0 and result["delta"] <= 1e-5, (name, result)  # the member's own budget
        assert not result["insecure_pilot"] and result["noise_source"].startswith("os-csprng"), (name, result)
        assert result["trained_accuracy"] >= MIN_ACCURACY, (name, result)
        assert result["trained_loss"] < min(result["untrained_loss"], math.log(2)) / 2, (name, result)


def _training_toml(world: dict[str, Any]) -> Path:
    tmp = world["tmp"]
    return write_toml(tmp / "training.toml", {
        "training": {"model_path": str(world["model"]), "output_dir": str(tmp / "run"), "quorum": 3,
                     "deadline_s": 120.0, "enrol_timeout_s": 240.0, "router": "learned", "group_size": 2,
                     "per_device_batch": 2, "max_steps": GRPO_STEPS, "max_completion_length": 8,
                     "learning_rate": 5e-3, "beta": 0.04, "use_lora": True},
        "data": {role: str(path) for role, path in world["datasets"].items()}})


def _wait_for_report(server: Any, agents: dict[str, Any], report: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not report.is_file():
        for process in (server, *agents.values()):
            if not process.alive():
                raise AssertionError(f"{process.name} exited ({process.returncode}):\n{process.log_tail()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no training report after {timeout_s:.0f} s:\n{server.log_tail()}")
        time.sleep(1.0)


def _server_entries(audit_dir: Path, action: str) -> list[dict[str, Any]]:
    lines = (audit_dir / "entries.jsonl").read_text("utf-8").splitlines()
    return [e["entry"]["details"] for e in map(json.loads, lines) if e["entry"]["action"] == action]


def test_server_aligns_on_imported_data_with_three_agents_and_every_log_verifies(world: dict[str, Any]) -> None:
    tmp, started = world["tmp"], time.monotonic()
    config = write_server_config(tmp, world["pki"], policy=world["policy"], port=world["port"], long_poll_max_s=10.0)
    server = start_server(config, training=_training_toml(world), keep_serving=True, cwd=REPO_ROOT,
                          log=tmp / "server.log")
    env = {**AGENT_ENV, "PYTHONPATH": os.pathsep.join([str(tmp), os.environ.get("PYTHONPATH", "")])}
    agents = {name: start_agent(path, log=tmp / f"{name}.log", env=env) for name, path in world["configs"].items()}
    try:
        _wait_for_report(server, agents, tmp / "run" / "training_report.json", timeout_s=420)
    finally:  # SIGTERM: agents first (they finish the task in hand), then the server; each seals its log
        exits = {name: agent.stop(30) for name, agent in agents.items()}
        exits["server"] = server.stop(60)
    assert exits == dict.fromkeys([*agents, "server"], 0), exits
    world["timings"]["server run + agents"] = time.monotonic() - started

    steps = [json.loads(line) for line in (tmp / "run" / "metrics.jsonl").read_text("utf-8").splitlines()]
    assert [s["step"] for s in steps] == list(range(1, GRPO_STEPS + 1))
    assert all(s["agents_answered"] == 3 and not s.get("round_skipped") for s in steps), steps

    data = tomllib.loads(config.read_text("utf-8"))["server"]
    server_audit, server_key = Path(data["audit_dir"]), SigningKey.load(data["signing_key"]).verify_key()
    loaded = {e["role"]: e for e in _server_entries(server_audit, "data.loaded")}
    for role, path in world["datasets"].items():
        info = dataset_info(path)
        assert (loaded[role]["sha256"], loaded[role]["count"]) == (info.digest, info.count), (role, loaded[role])
        assert set(loaded[role]["domains"]) == set(DOMAINS)

    members = {}
    for path in world["configs"].values():
        agent = load_agent_config(path, check_policy=False)
        members[agent.identity()] = (agent.audit_dir, SigningKey.load(agent.signing_key_path).verify_key())
    result = reconcile(server_audit, server_key, members)
    assert result.logs_ok, [log.problems for log in result.logs if not log.ok]
    assert result.receipts_ok, [r for r in result.receipts if not r.ok]
    per_agent = {who: sum(r.agent == who for r in result.receipts) for who in members}
    # calibration + router fit + one score round per GRPO step, every one receipted by every member
    assert all(n >= 2 + GRPO_STEPS for n in per_agent.values()), per_agent
    print("\ntimings (s): " + json.dumps({k: round(v, 1) for k, v in world["timings"].items()}))
