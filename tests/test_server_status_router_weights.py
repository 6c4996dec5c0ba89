"""The status page shows the router's *current* weights per prompt domain, and every kind of round.

An operator or auditor reading ``/status`` must see how the fused reward is actually being
mixed right now: after a learned router is fitted, its mean weight per agent per domain (not a
constant), and for uniform/fixed routers the weights they really apply. Calibrate and router
rounds (status ``collected``) are rounds too and are counted.
"""

from __future__ import annotations

import html
import time
from pathlib import Path

import httpx
import pytest
import torch
from helpers.consortium import server_data, write_policy
from helpers.pki import make_pki
from helpers.procs import free_port, start_server, write_server_config

from server.router import FixedRouter, LearnedRouter, RouterFitConfig, RouterTrainingSet, UniformRouter
from server.state import StateStore
from server.trainer import publish_router_weights

pytestmark = pytest.mark.timeout(180)
AGENTS = ("mor://testnet/client/medic", "mor://testnet/client/banker")
DOMAINS = ("medical", "finance")


def _domain_features(domains: list[str], gen: torch.Generator) -> torch.Tensor:
    """8-d prompt features whose first two coordinates say the domain (plus noise)."""
    onehot = torch.tensor([[d == "medical", d == "finance"] for d in domains], dtype=torch.float32)
    return torch.cat([onehot, 0.3 * torch.randn(len(domains), 6, generator=gen)], dim=1)


def _fitted_router() -> LearnedRouter:
    """Fitted on pairs where 'medic' ranks medical answers right and 'banker' ranks finance ones right."""
    gen = torch.Generator().manual_seed(0)
    domains = [DOMAINS[i % 2] for i in range(160)]
    right = torch.tensor([[d == "medical", d == "finance"] for d in domains], dtype=torch.float32)
    noise = torch.randn(160, 2, generator=gen)
    chosen, rejected = right * 2 + 0.5 * noise, -right * 2 + 0.5 * noise.flip(1) * -1
    data = RouterTrainingSet(agents=AGENTS, features=_domain_features(domains, gen), chosen=chosen,
                             rejected=rejected, mask=torch.ones(160, 2, dtype=torch.bool), domains=tuple(domains))
    router = LearnedRouter(AGENTS, feature_dim=8, hidden=16, seed=0)
    router.fit(data, RouterFitConfig(max_epochs=40, seed=0, show_progress=False))
    return router


def _close_round(store: StateStore, round_id: str, kind: str, status: str) -> None:
    store.create_round(round_id, kind=kind, n_items=1, deadline=time.time() + 60, now=time.time(), task_payloads={})
    if status != "open":
        store.close_round(round_id, status=status, outcome={})


def test_round_counts_include_collected_rounds(tmp_path: Path) -> None:
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    for i, (kind, status) in enumerate([("calibrate", "collected"), ("router", "collected"), ("score", "fused"),
                                        ("score", "skipped"), ("score", "open")]):
        _close_round(store, f"r{i}", kind, status)
    assert store.round_counts() == {"open": 1, "fused": 1, "collected": 2, "skipped": 1}


def test_uniform_and_fixed_routers_show_the_weights_they_apply(tmp_path: Path) -> None:
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    features, domains = torch.zeros(4, 1), ["medical", "finance", "medical", "general"]
    assert store.current_router_weights() is None
    publish_router_weights(store, UniformRouter(AGENTS), features, domains, basis="test", now=1.0)
    assert store.current_router_weights()["overall"] == {a: 0.5 for a in AGENTS}  # type: ignore[index]
    fixed = publish_router_weights(store, FixedRouter({AGENTS[0]: 3.0, AGENTS[1]: 1.0}), features, domains,
                                   basis="test", now=2.0)
    assert fixed == {d: {AGENTS[0]: 0.75, AGENTS[1]: 0.25} for d in ("finance", "general", "medical")}
    current = store.current_router_weights()
    assert current is not None and current["kind"] == "fixed" and current["updated_at"] == 2.0


def test_status_json_and_html_show_the_fitted_routers_weights_per_domain(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    config = write_server_config(tmp_path, pki, policy=write_policy(tmp_path / "policy.toml"), port=free_port())
    (tmp_path / "server-data").mkdir()
    store = StateStore(str(server_data(config)["database_url"]))
    for i, (kind, status) in enumerate([("calibrate", "collected"), ("router", "collected"), ("score", "fused")]):
        _close_round(store, f"r{i}", kind, status)
    router = _fitted_router()
    domains = [DOMAINS[i % 2] for i in range(40)]
    shown = publish_router_weights(store, router, _domain_features(domains, torch.Generator().manual_seed(1)),
                                   domains, basis="mean over the 40 GRPO training prompts", now=time.time())
    medic, banker = AGENTS
    assert shown["medical"][medic] > 0.6 and shown["finance"][banker] > 0.6  # really input-conditioned
    store.engine.dispose()

    auditor = pki.issue("auditor")
    with start_server(config) as server:
        with httpx.Client(base_url=server.base_url, verify=auditor.client_context()) as http:
            status = http.get("/v1/status").json()
            page = http.get("/status").text
        assert server.stop() == 0  # after closing the client: an idle TLS connection delays shutdown
    assert (status["rounds_completed"], status["rounds_collected"], status["rounds_skipped"]) == (1, 2, 0)
    assert status["router"]["kind"] == "learned" and status["router"]["digest"] == router.digest()
    assert status["router"]["by_domain"] == shown  # rounded to 1e-6 when recorded: exact through JSON
    overall = status["router_weights"]
    assert overall[medic] == pytest.approx((shown["medical"][medic] + shown["finance"][medic]) / 2, abs=1e-5)
    assert "1 / 2 / 0" in page and html.escape(router.digest()) in page
    for domain in DOMAINS:
        assert f"<th>{domain}</th>" in page
        for agent in AGENTS:
            assert f"<td>{shown[domain][agent]:.4f}</td>" in page
