"""fused-only, real processes: the router is fitted and agents calibrated through the key holder.

``mor keyholder serve`` (with the consortium policy, which opts in to per-agent decryption of
public rounds), ``mor server serve`` (no secret key) and two ``mor client run`` agents with
DP-trained reward models on different private data, all over mutual TLS on loopback. The round
coordinator runs here on the server's own state store with the server's certificate, exactly
as ``mor server run`` does: a calibrate round and a router round (public data) come back per
agent through ``/v1/decrypt-agent``, the learned router is fitted, and a score round is fused
with it — decrypted only as one fused vector. The key holder's own count shows it: one
per-agent decryption per public-round envelope, none for a score round, which it refuses.
"""

from __future__ import annotations

import json
import statistics
import time
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers.consortium import actions, audit_report, server_data
from helpers.memory_audit import MemoryAudit
from helpers.pki import make_pki
from helpers.procs import (
    ServiceProcess,
    free_port,
    start_agent,
    start_keyholder,
    start_server,
    write_keyholder_config,
    write_server_config,
    write_toml,
)
from test_rounds_coordinator import features

from corpus.builders import build_calibration_set, build_client_pairs, build_prompts
from corpus.store import save_pairs
from mor_cli.main import main
from server.fusion import ScoreRange
from server.keyholder.client import KeyHolderClient
from server.privacy_mode import privacy_mode_for
from server.rounds import RoundCoordinator, RoundPolicy
from server.router import make_router
from server.state import StateStore
from server.trainer import TrainingSection, fit_router_on_public_pairs
from server.training_data import DataSection, calibration_round, load_router_pairs, round_digest, router_round
from wire.calibration import Calibration

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


CALIBRATION = build_calibration_set(12, seed=3)
TRAINING = dict(n_public_pairs=16, seed=0)


def _public_round_digests() -> list[str]:
    """The two public rounds this test runs, as the consortium would publish them in its policy."""
    pairs, _ = load_router_pairs(DataSection(), n=TRAINING["n_public_pairs"], seed=TRAINING["seed"])
    return [round_digest("calibrate", *calibration_round(CALIBRATION)), round_digest("router", *router_round(pairs))]


def _policy(path: Path) -> Path:
    return write_toml(path, {
        "admission": {"allow_all_certified": True},
        "privacy": {"mode": "fused-only", "max_epsilon": 8.0, "max_delta": 1e-5, "public_rounds_per_agent": True,
                    "public_round_digests": _public_round_digests()},
        "rounds": {"quorum": 2, "deadline_s": 90, "group_size": 2, "prompts_per_round": 2},
        "scores": {"min": -50.0, "max": 50.0, "out_of_range": "refuse", "max_vector_length": 64},
        "audit": {"retention_days": 30, "checkpoint_every": 16},
        "limits": {"max_body_bytes": 2_000_000, "requests_per_minute": 6000},
    }, top={"consortium": "testnet", "pilot": True})


def _train_agent(tmp: Path, pki: Any, name: str, style: str, policy: Path, server_url: str) -> Path:
    party = pki.issue(name)
    data = tmp / f"{name}-data"
    save_pairs(build_client_pairs(style, 40, seed=1), data)
    out = tmp / f"{name}.toml"
    assert main(["client", "init-config", "--out", str(out), "--server-url", server_url,
                 "--server-identity", pki.server.identity, "--policy", str(policy), "--cert", str(party.cert),
                 "--key", str(party.key), "--ca", str(pki.ca_cert), "--crl", str(pki.crl), "--data-dir", str(data),
                 "--state-dir", str(tmp / f"{name}-state"), "--epsilon", "6", "--delta", "1e-5",
                 "--insecure-pilot"]) == 0
    text = out.read_text().replace("params = {  }", "params = { hidden = 16 }")
    out.write_text(text.replace("epochs = 5", "epochs = 2").replace("batch_size = 64", "batch_size = 20"))
    with pytest.warns(UserWarning):
        assert main(["client", "train", "--config", str(out), "--quiet"]) == 0
    return out


def _wait(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_fused_only_fits_router_and_calibrates_through_key_holder_only_on_public_rounds(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    policy = _policy(tmp_path / "policy.toml")
    kh_config = write_keyholder_config(tmp_path, pki, port=free_port(), policy=str(policy))
    server_port = free_port()
    configs = [_train_agent(tmp_path, pki, name, style, policy, f"https://127.0.0.1:{server_port}")
               for name, style in (("alice", "medical"), ("bob", "finance"))]
    agents: list[ServiceProcess] = []
    with start_keyholder(kh_config) as keyholder:
        server_config = write_server_config(tmp_path, pki, policy=policy, port=server_port,
                                            keyholder_url=keyholder.base_url)
        with start_server(server_config) as server:
            store = StateStore(str(server_data(server_config)["database_url"]))
            try:
                agents += [start_agent(config, log=config.with_suffix(".log")) for config in configs]
                _wait(lambda: len(store.list_agents()) == 2, 90, "both agents enrolled")
                assert server.alive(), server.log_text()
                identities = sorted(a["identity"] for a in store.list_agents())
                assert all("key_binding" in json.loads(a["privacy_report"]) for a in store.list_agents())

                trail = MemoryAudit()
                with KeyHolderClient(keyholder.base_url, pki.server.client_context()) as client:
                    fusion = privacy_mode_for("fused-only", scores=ScoreRange(-50, 50), audit=trail,
                                              context=client.public_context(),
                                               keyholder=client, public_rounds_per_agent=True)
                    coordinator = RoundCoordinator(state=store, audit=trail, privacy=fusion, features=features,
                                                   router=make_router("uniform", identities), show_progress=False,
                                                   policy=RoundPolicy(quorum=2, deadline_s=90))
                    # calibrate round (public batch) -> each agent's mean/std, as the server measures it
                    calibrate = coordinator.run_round("calibrate", *calibration_round(CALIBRATION))
                    assert calibrate.status == "collected", calibrate.reason
                    calibrations = {a: Calibration(statistics.fmean(v), statistics.pstdev(v))
                                    for a, v in (calibrate.vectors or {}).items()}
                    assert sorted(calibrations) == identities
                    # router round (labelled public pairs) -> a fitted, input-conditioned router
                    training = TrainingSection(model_path=tmp_path / "unused", output_dir=tmp_path / "out",
                                               **TRAINING)  # type: ignore[arg-type]
                    router, fit = fit_router_on_public_pairs(coordinator, calibrations, training)
                    assert fit["n_train"] + fit["n_val"] == 16
                    prompts = build_prompts(4, split="train", seed=0)
                    weights = router.weights(features(prompts), identities)
                    assert float((weights - 0.5).abs().max()) > 1e-3, "router still uniform"
                    assert float(weights[:, 0].std()) > 0, "router weights do not depend on the input"
                    # a score round is fused with that router and the calibrations: one fused decryption
                    coordinator.set_router(router)
                    for identity, cal in calibrations.items():
                        store.set_calibration(identity, {"mean": cal.mean, "std": cal.std, "source": "test"})
                    scored = coordinator.run_round("score", prompts, [(i % 4, f"answer {i}") for i in range(8)])
                    assert scored.status == "fused" and all(r is not None for r in scored.rewards or [])
                    fused_entry = next(d for _, a, d in trail.entries if a == "round.fused")
                    assert not fused_entry["uncalibrated"] and fused_entry["router_digest"] == router.digest()

                    status = httpx.get(keyholder.url("/v1/keyholder/status"),
                                       verify=pki.server.client_context()).json()
                    assert status["agent_decryptions"] == 4  # 2 agents x (calibrate + router)
                    assert status["fused_decryptions"] == 1 and status["public_rounds_per_agent"] is True
                    # the server asking for one agent's score-round vector is refused (and counted nowhere)
                    row = store.submissions_for_round(scored.round_id)[0]
                    binding = json.loads(store.agent(row["agent"])["privacy_report"])["key_binding"]  # type: ignore[index]
                    refused = httpx.post(keyholder.url("/v1/decrypt-agent"), verify=pki.server.client_context(),
                                         json={"envelope": row["envelope"], "key_binding": binding})
                    assert (refused.status_code, refused.json()["code"]) == (403, "not_public_round")
                server_actions = [a for _, a, _ in trail.entries]
                assert server_actions.count("keyholder.agent_decryption") == 4
                assert "decrypt.agent" not in server_actions  # the server itself never decrypts
            finally:
                for agent in agents:
                    agent.stop(30)
                store.engine.dispose()
    report = audit_report(kh_config, "keyholder")
    assert report.ok, report.first_problem
    counts = actions(report, pki.server.identity)
    assert (counts["decrypt.agent"], counts["decrypt.fused"], counts["reject.not_public_round"]) == (4, 1, 1)
    audit_dir = Path(tomllib.loads(kh_config.read_text("utf-8"))["keyholder"]["audit_dir"])
    entries = [json.loads(line)["entry"] for line in (audit_dir / "entries.jsonl").read_text().splitlines()]
    opened = sorted(e["round_id"].split("-")[0] for e in entries if e["action"] == "decrypt.agent")
    assert opened == ["calibrate", "calibrate", "router", "router"]  # never a score round
