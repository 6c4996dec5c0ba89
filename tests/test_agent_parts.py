"""The agent's parts: ledger durability, calibration and payload checks, retries, the server pin, receipts."""

from __future__ import annotations

import asyncio
import base64
import io
import math
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import uvicorn
from helpers.pki import make_pki
from helpers.procs import free_port
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from audit import AuditLog
from audit.wire_form import inclusion_to_wire
from client_agent.errors import (
    LedgerError,
    PinMismatchError,
    ScoringError,
    ServerRefusedError,
    ServerTrustError,
    ServerUnreachableError,
)
from client_agent.ledger import TaskLedger, utc_day
from client_agent.receipts import verify_receipt, verify_receipt_inclusion
from client_agent.scoring import calibration_report, decode_image, measure_calibration, score_items
from client_agent.transport import RetryPolicy, ServerChannel, ServerPin
from crypto.signing import SigningKey
from crypto.tls import client_ssl_context, server_ssl_context
from server.mtls import uvicorn_config
from wire.messages import PromptPayload, Receipt, SignedInclusionProof, TaskItem

NOW = 1_790_000_000.0


# -- ledger ----------------------------------------------------------------------------------------------
def test_sealed_envelope_survives_a_crash_and_is_never_replaced(tmp_path: Path) -> None:
    path = tmp_path / "state" / "ledger.sqlite"
    ledger = TaskLedger.open(path)
    envelope = {"nonce": "ab" * 16, "scores": [0.5, -1.25]}
    ledger.record_sealed(task_id="t1", round_id="r1", kind="score", n_items=2, envelope=envelope,
                         envelope_sha256="e" * 64, now=NOW)
    # no close(): what a kill -9 leaves behind
    again = TaskLedger.open(path)
    [pending] = again.pending()
    assert (pending.task_id, pending.envelope, pending.envelope_sha256) == ("t1", envelope, "e" * 64)
    with pytest.raises(LedgerError, match="never scored twice"):
        again.record_sealed(task_id="t1", round_id="r1", kind="score", n_items=2, envelope={"nonce": "cd" * 16},
                            envelope_sha256="f" * 64, now=NOW)
    assert again.get("t1").envelope == envelope  # type: ignore[union-attr]
    assert path.stat().st_mode & 0o077 == 0


def test_daily_count_and_status_transitions(tmp_path: Path) -> None:
    with TaskLedger.open(tmp_path / "l.sqlite") as ledger:
        for i, n in enumerate((3, 4)):
            ledger.record_sealed(task_id=f"t{i}", round_id="r", kind="score", n_items=n, envelope={}, now=NOW,
                                 envelope_sha256=str(i) * 64)
        ledger.record_refused(task_id="big", round_id="r", kind="score", n_items=100, reason="too big", now=NOW)
        ledger.record_sealed(task_id="old", round_id="r", kind="score", n_items=50, envelope={},
                             envelope_sha256="9" * 64, now=NOW - 86400)
        assert ledger.items_scored_on(utc_day(NOW)) == 7  # refused tasks were never scored
        ledger.mark_receipted("t0", {"task_id": "t0"}, NOW)
        ledger.mark_abandoned("t1", "410 task_expired", NOW)
        assert ledger.items_scored_on(utc_day(NOW)) == 7
        assert [e.task_id for e in ledger.pending()] == ["old"]
        with pytest.raises(LedgerError, match="not a sealed task"):
            ledger.mark_receipted("t0", {}, NOW)
        ledger.set_meta("k", "v1")
        ledger.set_meta("k", "v2")
        assert ledger.get_meta("k") == "v2"


# -- scoring ---------------------------------------------------------------------------------------------
@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3), min_size=2, max_size=50).filter(lambda v: max(v) - min(v) > 1e-3))
def test_calibration_puts_the_batch_on_a_common_scale(values: list[float]) -> None:
    scores = torch.tensor(values, dtype=torch.float64)
    cal = measure_calibration(scores)
    z = cal.zscore(scores)
    assert abs(float(z.mean())) < 1e-6 and abs(float(z.std(unbiased=False)) - 1) < 1e-6
    assert calibration_report(cal).n == len(values)


def test_degenerate_calibration_is_refused() -> None:
    with pytest.raises(ScoringError, match="constant or non-finite"):
        measure_calibration(torch.ones(8))
    with pytest.raises(ScoringError, match="at least 2"):
        measure_calibration(torch.ones(1))


def _png(size: tuple[int, int] = (8, 8), fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, "red").save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode()


def test_untrusted_payloads_are_refused_precisely() -> None:
    assert decode_image(_png(), "p", max_pixels=64).size == (8, 8)
    with pytest.raises(ScoringError, match=r"prompts\[0\]: not valid base64"):
        decode_image("@@@", "prompts[0]", max_pixels=64)
    with pytest.raises(ScoringError, match="expected a PNG image, got JPEG"):
        decode_image(_png(fmt="JPEG"), "x", max_pixels=64)
    with pytest.raises(ScoringError, match="9x9 image exceeds the local limit of 64 pixels"):
        decode_image(_png((9, 9)), "x", max_pixels=64)
    with pytest.raises(ScoringError, match="not a readable PNG"):
        decode_image(base64.b64encode(b"\x89PNG\r\n\x1a\nbroken").decode(), "x", max_pixels=64)
    prompts = [PromptPayload(prompt_id="p", question="q?", image_png_b64=_png())]
    with pytest.raises(ScoringError, match=r"items\[1\]\.prompt_index=3: the task has 1 prompts"):
        score_items(None, prompts, [TaskItem(prompt_index=0, response="a"), TaskItem(prompt_index=3, response="b")])  # type: ignore[arg-type]


# -- retries (no sockets: httpx.MockTransport) -------------------------------------------------------------
def _channel(replies: list[Any], **retry: Any) -> tuple[ServerChannel, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        reply = replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply

    channel = ServerChannel("https://server.test", ssl.create_default_context(), ServerPin("mor://t/server/s"),
                            retry=RetryPolicy(**{"base_s": 0.001, "max_s": 0.002, **retry}),
                            transport=httpx.MockTransport(handler))
    return channel, seen


def test_network_errors_5xx_and_429_are_retried_4xx_never() -> None:
    ok = httpx.Response(200, json={"ok": True, "audit_index": 7})
    channel, seen = _channel([httpx.ConnectError("refused"), httpx.Response(503), httpx.Response(429), ok])
    assert channel.request("GET", "/v1/status").json()["audit_index"] == 7 and len(seen) == 4
    channel, seen = _channel([httpx.Response(409, json={"code": "duplicate_submission", "message": "twice"})])
    with pytest.raises(ServerRefusedError, match="409 duplicate_submission") as info:
        channel.request("POST", "/v1/submissions")
    assert info.value.code == "duplicate_submission" and len(seen) == 1
    channel, seen = _channel([httpx.ReadTimeout("slow")] * 3, max_attempts=3)
    with pytest.raises(ServerUnreachableError, match="ReadTimeout: slow .gave up after 3 attempts"):
        channel.request("GET", "/v1/tasks/next")
    assert len(seen) == 3


def test_a_stop_request_ends_the_retry_wait_at_once() -> None:
    channel, seen = _channel([httpx.ConnectError("down")] * 100, base_s=30.0, max_s=30.0)
    threading.Timer(0.3, channel.stop.set).start()
    started = time.monotonic()
    with pytest.raises(ServerUnreachableError, match="stopped while waiting to retry"):
        channel.request("GET", "/v1/status")
    assert time.monotonic() - started < 5 and len(seen) == 1


@given(st.integers(1, 60))
def test_backoff_grows_and_stays_capped(attempt: int) -> None:
    policy, rng = RetryPolicy(base_s=0.5, max_s=30.0), __import__("random").Random(attempt)
    ceiling = min(30.0, 0.5 * 2 ** (attempt - 1))
    assert ceiling / 2 <= policy.delay(attempt, rng) <= ceiling


# -- the pin and a dead long poll, over real mutual TLS ------------------------------------------------------
@contextmanager
def _serve(app: Any, context: ssl.SSLContext) -> Iterator[str]:
    """A real uvicorn over mutual TLS on loopback, in a thread; yields its URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn_config(app, host="127.0.0.1", port=port, ssl_context=context))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def test_a_server_with_another_identity_gets_no_request(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    impostor, alice = pki.issue("impostor", "server"), pki.issue("alice")
    hits: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        hits.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})

    context = server_ssl_context(impostor.cert, impostor.key, pki.ca_cert, pki.crl)
    with _serve(app, context) as url:
        tls = client_ssl_context(alice.cert, alice.key, pki.ca_cert, pki.crl)
        for pin in (ServerPin(pki.server.identity), ServerPin(impostor.identity, "0" * 64)):
            channel = ServerChannel(url, tls, pin, retry=RetryPolicy(max_attempts=1))
            with pytest.raises(PinMismatchError, match="not the pinned"):
                channel.request("POST", "/v1/enrol", json={"secret": 1})
            channel.close()
        assert hits == []  # not one request reached the wrong server
        right = ServerChannel(url, tls, ServerPin(impostor.identity), retry=RetryPolicy(max_attempts=1))
        assert right.request("GET", "/v1/status").text == "ok" and hits == ["/v1/status"]
        right.close()


def test_an_unanswered_long_poll_is_given_up_after_its_wait_not_the_read_timeout(tmp_path: Path) -> None:
    """What a dropped link looks like to the agent: the poll's answer never comes (RUNBOOK: a site's link drops)."""
    pki = make_pki(tmp_path)
    alice = pki.issue("alice")
    polls: list[str] = []

    async def black_hole(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            polls.append(scope["query_string"].decode())
            await asyncio.sleep(2.5)  # outlives the client's 1 s read timeout: the answer never comes

    context = server_ssl_context(pki.server.cert, pki.server.key, pki.ca_cert, pki.crl)
    with _serve(black_hole, context) as url:
        tls = client_ssl_context(alice.cert, alice.key, pki.ca_cert, pki.crl)
        channel = ServerChannel(url, tls, ServerPin(pki.server.identity), poll_grace_s=0.5,
                                retry=RetryPolicy(max_attempts=2, base_s=0.01), timeout=httpx.Timeout(60.0))
        started = time.monotonic()
        with pytest.raises(ServerUnreachableError, match="ReadTimeout.*gave up after 2 attempts"):
            channel.next_task(0.5)
        elapsed = time.monotonic() - started
        channel.close()
    assert polls == ["wait=0.5", "wait=0.5"]  # each attempt on a fresh connection reached the server
    assert 2.0 <= elapsed < 3.9, elapsed  # 2 x (wait + grace): given up long before the general 60 s read timeout


# -- receipts and inclusion proofs -------------------------------------------------------------------------
def _signed_receipt(key: SigningKey, **fields: Any) -> Receipt:
    receipt = Receipt(**{"task_id": "t1", "round_id": "r1", "agent": "mor://testnet/client/alice",
                         "envelope_sha256": "e" * 64, "received_at": NOW, "audit_index": 0,
                         "audit_leaf_sha256": "0" * 64, **fields})
    return receipt.model_copy(update={"signature_b64": base64.b64encode(key.sign(receipt.signed_bytes())).decode()})


def test_receipt_signature_and_binding(tmp_path: Path) -> None:
    server, other = SigningKey.generate(), SigningKey.generate()
    expected = {"agent": "mor://testnet/client/alice", "task_id": "t1", "round_id": "r1", "envelope_sha256": "e" * 64}
    verify_receipt(_signed_receipt(server), server.verify_key(), **expected)
    with pytest.raises(ServerTrustError, match="receipt signature does not verify"):
        verify_receipt(_signed_receipt(other), server.verify_key(), **expected)
    with pytest.raises(ServerTrustError, match="receipt.envelope_sha256 is 'fff"):
        verify_receipt(_signed_receipt(server, envelope_sha256="f" * 64), server.verify_key(), **expected)
    forged = _signed_receipt(server).model_copy(update={"audit_index": 5})
    with pytest.raises(ServerTrustError, match="signature does not verify"):
        verify_receipt(forged, server.verify_key(), **expected)


def test_inclusion_proof_against_a_real_signed_checkpoint(tmp_path: Path) -> None:
    key = SigningKey.generate()
    with AuditLog.open(tmp_path / "server-audit", signing_key=key, origin="mor://testnet/server") as log:
        for i in range(6):
            log.append(actor="server", action="filler", details={"i": i})
        entry = log.append(actor="alice", action="submission.accepted", task_id="t1")
        log.append(actor="server", action="filler")
        head = log.checkpoint()
        proof = log.inclusion_proof(entry.index, head.size)
    wire = SignedInclusionProof.model_validate(inclusion_to_wire(proof, head))
    receipt = _signed_receipt(key, audit_index=entry.index, audit_leaf_sha256=entry.leaf_hash_hex)
    assert verify_receipt_inclusion(receipt, wire, key.verify_key()).size == 8
    bad_path = wire.model_copy(update={"path_sha256": ["0" * 64, *wire.path_sha256[1:]]})
    with pytest.raises(ServerTrustError, match="inclusion proof of audit entry 6 fails"):
        verify_receipt_inclusion(receipt, bad_path, key.verify_key())
    with pytest.raises(ServerTrustError, match="checkpoint .size 8. is not signed by the server key"):
        verify_receipt_inclusion(receipt, wire, SigningKey.generate().verify_key())
    other_entry = _signed_receipt(key, audit_index=3, audit_leaf_sha256=entry.leaf_hash_hex)
    with pytest.raises(ServerTrustError, match="proof is for entry 6"):
        verify_receipt_inclusion(other_entry, wire, key.verify_key())


def test_scores_outside_the_policy_range_are_clipped_and_counted_not_sent_to_be_refused() -> None:
    """A confident reward model's 10.4 would get the member's whole vector refused (and the round, at quorum)."""
    from client_agent.scoring import within_policy_range

    values, outside = within_policy_range([-12.5, -10.0, 0.3, 10.4, float("nan")], -10.0, 10.0)
    assert values[:4] == [-10.0, -10.0, 0.3, 10.0] and math.isnan(values[4])
    assert outside == 3  # the NaN counts as outside; it is left for the scorer's and the server's refusals
    assert within_policy_range([0.1, 0.2], -1.0, 1.0) == ([0.1, 0.2], 0)
