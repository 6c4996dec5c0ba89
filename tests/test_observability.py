"""Probes, metrics and JSON logs of a real ``mor server serve`` process (and an in-process key holder).

One ckks server for the module (a pilot policy, so it also warns), with the ``[observability]``
probe listener on loopback and JSON logs. Prepare: a CA, a member, a task opened in the
server's store. Execute: real requests on the mTLS port and plain HTTP on the probe port.
Assert: probes answer without a certificate while the API port still refuses one without; counters move after a real
accepted and a real refused envelope; readiness turns false while the audit directory is
gone or the CRL is expired, and back; every line the server logged parses as JSON.
"""

from __future__ import annotations

import datetime as dt
import json
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from helpers.consortium import Agent, issue_task, server_data, write_policy
from helpers.pki import TestPKI, make_pki
from helpers.procs import ServiceProcess, free_port, start_server, write_keyholder_config, write_server_config
from prometheus_client.parser import text_string_to_metric_families

from crypto.ckks import load_public_context
from crypto.envelope import seal_scores

pytestmark = pytest.mark.timeout(180)


@dataclass
class World:
    """The running server, its config and the base URL of its probe listener."""

    probes: str
    server: ServiceProcess
    pki: TestPKI
    config: Path

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.probes + path, timeout=10)

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        reply = self.get("/metrics")
        assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(reply.text) for s in family.samples}


def _observability(port: int, **extra: str) -> str:
    lines = ["", "[observability]", 'probe_host = "127.0.0.1"', f"probe_port = {port}"]
    return "\n".join(lines + [f'{k} = "{v}"' for k, v in extra.items()]) + "\n"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("observed")
    pki = make_pki(tmp)
    policy = write_policy(tmp / "policy.toml", mode="ckks", pilot=True)
    config = write_server_config(tmp, pki, policy=policy, port=free_port())
    probe_port = free_port()
    with config.open("a", encoding="utf-8") as file:
        file.write(_observability(probe_port, log_format="json"))
    with start_server(config) as server:
        yield World(f"http://127.0.0.1:{probe_port}", server, pki, config)
    assert server.proc.returncode == 0, server.log_text()


def test_probes_answer_without_a_certificate_and_the_api_port_still_refuses(world: World) -> None:
    assert world.get("/livez").json() == {"alive": True}
    ready = world.get("/readyz")
    assert ready.status_code == 200, ready.text
    checks = ready.json()["checks"]
    assert set(checks) >= {"state_store", "state_dir", "audit_log", "key_material", "crl", "certificate", "api"}
    assert set(checks.values()) == {"ok"}
    assert world.get("/v1/status").status_code == 404  # nothing of the API on the probe port
    assert httpx.post(world.probes + "/readyz", timeout=10).status_code == 405
    no_cert = ssl.create_default_context(cafile=str(world.pki.ca_cert))
    with pytest.raises(httpx.HTTPError), httpx.Client(verify=no_cert, timeout=10) as http:
        http.get(world.server.url("/v1/status"))


def test_counters_move_after_an_accepted_and_a_refused_envelope(world: World) -> None:
    before = world.metrics()
    alice = Agent.of(world.pki, "alice", world.server.base_url)
    assert alice.enrol().status_code == 200
    round_id, task_id = issue_task(str(server_data(world.config)["database_url"]), alice.identity, n_items=3)
    context = load_public_context(alice.http.get("/v1/context").content)
    envelope = seal_scores([0.1, 0.2, 0.3], context, signing_key=alice.key, sender=alice.identity,
                           round_id=round_id, task_id=task_id).to_dict()
    assert alice.submit(task_id, envelope).status_code == 200
    forged = dict(envelope, payload_sha256="0" * 64)  # no longer what alice signed
    refusal = alice.submit(task_id, forged)
    assert 400 <= refusal.status_code < 500, refusal.text
    reason = refusal.json()["code"]
    after = world.metrics()
    accepted = ("mor_envelopes_accepted_total", ())
    refused = ("mor_envelopes_refused_total", (("reason", reason),))
    assert after[accepted] - before.get(accepted, 0.0) == 1
    assert after[refused] - before.get(refused, 0.0) == 1
    assert after[("mor_requests_refused_total", (("reason", reason),))] >= 1
    assert after[("mor_audit_log_entries", ())] > before[("mor_audit_log_entries", ())]
    assert after[("mor_audit_log_bytes", ())] > 0
    assert 29 * 86400 < after[("mor_crl_expires_in_seconds", ())] <= 30 * 86400
    assert 0 <= after[("mor_crl_age_seconds", ())] < 3600
    assert after[("mor_certificate_expires_in_seconds", ())] > 0
    alice.close()


def test_readiness_false_without_the_audit_directory_or_with_an_expired_crl(world: World) -> None:
    audit_dir = Path(str(server_data(world.config)["audit_dir"]))
    moved = audit_dir.with_name("audit-unmounted")
    audit_dir.rename(moved)
    try:
        reply = world.get("/readyz")
        assert reply.status_code == 503 and reply.json()["checks"]["audit_log"].startswith("failing")
        assert str(audit_dir) not in reply.text, "paths are for the operator's log, not for whoever reaches the port"
        logged = f"readiness check audit_log failing: audit log directory {audit_dir} is missing"
        assert logged in world.server.log_text()
        assert world.get("/livez").status_code == 200  # not ready is not dead: no restart loop
    finally:
        moved.rename(audit_dir)
    assert world.get("/readyz").status_code == 200
    world.pki.ca.refresh_crl(now=dt.datetime.now(dt.UTC) - dt.timedelta(days=40), days=30)
    try:
        reply = world.get("/readyz")
        assert reply.status_code == 503 and reply.json()["checks"]["crl"].startswith("failing")
        assert "readiness check crl failing" in world.server.log_text() and "EXPIRED" in world.server.log_text()
        assert world.metrics()[("mor_crl_expires_in_seconds", ())] < -9 * 86400
    finally:
        world.pki.ca.refresh_crl()
    assert world.get("/readyz").status_code == 200


def test_every_log_line_is_json(world: World) -> None:
    lines = [line for line in world.server.log_text().splitlines() if line.strip()]
    assert lines, "the server logged nothing"
    parsed = [json.loads(line) for line in lines]
    assert all({"ts", "level", "logger", "message"} <= set(p) for p in parsed)
    assert any("probes and metrics on http://127.0.0.1" in p["message"] for p in parsed)
    assert any(p["logger"] == "py.warnings" for p in parsed)  # the pilot policy's warning is a JSON line too


def test_keyholder_probes_in_process(tmp_path: Path) -> None:
    from server.keyholder.config import load_keyholder_config
    from server.wiring import open_keyholder

    pki = make_pki(tmp_path)
    config = write_keyholder_config(tmp_path, pki, port=free_port())
    probe_port = free_port()
    with config.open("a", encoding="utf-8") as file:
        file.write(_observability(probe_port))
    runtime = open_keyholder(load_keyholder_config(config))
    try:
        url = f"http://127.0.0.1:{probe_port}"
        reply = httpx.get(url + "/readyz", timeout=10)
        assert reply.status_code == 503 and reply.json()["checks"]["api"] != "ok"  # API not listening yet
        runtime.serving(lambda: True)
        reply = httpx.get(url + "/readyz", timeout=10)
        assert reply.status_code == 200, reply.text
        assert set(reply.json()["checks"]) == {"key_material", "audit_log", "crl", "certificate", "api"}
        text = httpx.get(url + "/metrics", timeout=10).text
        entries = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
        assert entries["mor_audit_log_entries"] >= 1  # keyholder.per_agent_policy
    finally:
        runtime.close()
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{probe_port}/livez", timeout=2)


def test_json_formatter_keeps_a_traceback_on_one_line() -> None:
    import logging

    from server.observability.logs import JsonFormatter

    try:
        raise ValueError("bad\nthing")
    except ValueError:
        import sys

        record = logging.LogRecord("mor.test", logging.ERROR, __file__, 1, "failed %s", ("here",), sys.exc_info())
    line = JsonFormatter().format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["message"] == "failed here" and parsed["level"] == "ERROR"
    assert parsed["exc"].startswith("Traceback") and "ValueError: bad\nthing" in parsed["exc"]


def test_round_latency_and_decryptions_counted_from_audit_entries() -> None:
    from server.observability.metrics import PartyMetrics

    metrics = PartyMetrics()
    metrics.observe("round.opened", {"round_id": "score-1"}, now=100.0)
    metrics.observe("round.opened", {"round_id": "score-2"}, now=101.0)
    metrics.observe("decrypt.agent", {"round_id": "score-1", "chunks": 2})
    metrics.observe("decrypt.refused", {"round_id": "score-1"})
    metrics.observe("keyholder.agent_decryption", {"outcome": "refused"})  # a refusal decrypts nothing
    metrics.observe("round.fused", {"round_id": "score-1"}, now=103.5)
    metrics.observe("round.skipped", {"round_id": "score-2"}, now=161.0)
    value = metrics.registry.get_sample_value
    assert value("mor_rounds_total", {"event": "opened"}) == 2
    assert value("mor_rounds_total", {"event": "fused"}) == value("mor_rounds_total", {"event": "skipped"}) == 1
    assert value("mor_round_duration_seconds_sum", {"outcome": "fused"}) == 3.5
    assert value("mor_round_duration_seconds_bucket", {"outcome": "skipped", "le": "30.0"}) == 0
    assert value("mor_round_duration_seconds_bucket", {"outcome": "skipped", "le": "60.0"}) == 1
    assert value("mor_decryptions_total", {"kind": "agent"}) == 2
    assert value("mor_decryptions_total", {"kind": "refused"}) == 1
    assert value("mor_decryptions_total", {"kind": "agent_by_keyholder"}) is None
