"""The agent's only way to the server: httpx over mutual TLS 1.3, pinned, with retries.

Trust, in order, on **every new connection**:

1. TLS 1.3 with this agent's client certificate; the server certificate must chain to the
   consortium CA (no system roots), pass the CRL and match the URL's host name
   (:func:`crypto.tls.client_ssl_context`);
2. the **pin**: the server certificate must carry the configured ``mor://.../server/...``
   URI SAN (and, if configured, have the pinned SHA-256). Any consortium member holding a
   certificate for the same host name would pass step 1; the pin stops it. The check runs
   inside the connection set-up — on the ``ssl_object`` of httpcore's network stream, right
   after the handshake — so not one request byte reaches a server that fails it.

Certificate renewal: with a :class:`~crypto.tls_reload.TlsReloader`, every request first checks
the certificate, key and CRL files; after a renewal the pool is replaced, so the next request
opens a new connection presenting the new certificate (requests in flight finish on the old one)
and the old certificate can be revoked at once.

Retries (:class:`RetryPolicy`): network errors, 5xx and 429 are retried with exponential
backoff and jitter; 4xx never are (:class:`~client_agent.errors.ServerRefusedError`), nor is
a pin mismatch. Every endpoint the agent calls is safe to repeat: submissions are idempotent
by design (the same envelope gets the same receipt), enrolment and calibration overwrite.
Waits between attempts end early when the agent is asked to stop.

A dropped link: nothing tells either end. A long poll's answer is due after its ``wait``, so
its read timeout is that wait plus :attr:`ServerChannel.poll_grace_s`, not the general read
timeout: an answer the server wrote into a dead connection would only arrive through TCP's
retransmissions, whose gaps double (up to two minutes on Linux) while the link is down; a
fresh connection after the short timeout is through as soon as the link is back
(``deploy/RUNBOOK.md``, "When a site's link drops").
"""

from __future__ import annotations

import hashlib
import logging
import random
import ssl
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpcore
import httpx
from pydantic import BaseModel, ValidationError

from client_agent.errors import (
    ChannelError,
    PinMismatchError,
    ServerRefusedError,
    ServerUnreachableError,
)
from crypto.envelope import BINARY_MEDIA_TYPE, Envelope
from crypto.tls_reload import TlsReloader
from wire.messages import (
    Ack,
    CalibrationReport,
    EnrolRequest,
    EnrolResponse,
    ErrorBody,
    Receipt,
    ScoringTask,
    SignedCheckpoint,
    SignedInclusionProof,
    Submission,
    TaskDecline,
)

log = logging.getLogger(__name__)
ModelT = TypeVar("ModelT", bound=BaseModel)


@dataclass(frozen=True)
class ServerPin:
    """The server identity (URI SAN) and, optionally, the exact certificate (SHA-256) to accept."""

    identity: str
    cert_sha256: str | None = None

    def check(self, der: bytes | None) -> None:
        """Raise :class:`PinMismatchError` unless ``der`` is the pinned server's certificate."""
        from crypto.errors import PKIError
        from crypto.pki import identity_of

        if not der:
            raise PinMismatchError("the server presented no certificate")
        try:
            found = identity_of(der)
        except PKIError as exc:
            raise PinMismatchError(f"server certificate carries no usable identity: {exc}") from None
        if found != self.identity:
            raise PinMismatchError(f"server certificate identity {found!r} is not the pinned {self.identity!r}")
        digest = hashlib.sha256(der).hexdigest()
        if self.cert_sha256 is not None and digest != self.cert_sha256:
            raise PinMismatchError(f"server certificate SHA-256 {digest} is not the pinned {self.cert_sha256}")


class _PinnedStream(httpcore.NetworkStream):
    """A TCP stream whose TLS upgrade checks the pin before returning."""

    def __init__(self, inner: httpcore.NetworkStream, pin: ServerPin) -> None:
        self._inner, self._pin = inner, pin

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        self._inner.close()

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        tls = self._inner.start_tls(ssl_context, server_hostname, timeout)
        ssl_object = tls.get_extra_info("ssl_object")
        try:
            self._pin.check(ssl_object.getpeercert(True) if ssl_object is not None else None)
        except PinMismatchError:
            tls.close()
            raise
        return tls


class _PinningBackend(httpcore.NetworkBackend):
    def __init__(self, pin: ServerPin, inner: httpcore.NetworkBackend | None = None) -> None:
        self._pin, self._inner = pin, inner or httpcore.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        return _PinnedStream(self._inner.connect_tcp(host, port, timeout, local_address, socket_options), self._pin)

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        raise PinMismatchError("unix sockets are not used by the agent")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class PinnedTransport(httpx.HTTPTransport):
    """httpx's transport with a connection pool whose every connection is pin-checked.

    httpx 0.28 has no public hook for the network backend, so the pool it built is replaced
    by an identical one with the pinning backend (a test fails if a pin is ever not enforced).
    """

    def __init__(self, ssl_context: ssl.SSLContext, pin: ServerPin) -> None:
        super().__init__(verify=ssl_context, trust_env=False)
        self._pool = httpcore.ConnectionPool(ssl_context=ssl_context, network_backend=_PinningBackend(pin))


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter; ``max_attempts=0`` retries until the agent stops."""

    max_attempts: int = 0
    base_s: float = 0.5
    max_s: float = 30.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds before retry number ``attempt`` (1-based): half fixed, half random ("equal jitter")."""
        ceiling = min(self.max_s, self.base_s * 2 ** min(attempt - 1, 30))
        return ceiling / 2 + rng.uniform(0, ceiling / 2)


@dataclass
class ServerChannel:
    """Typed calls to the ``/v1`` API (see :mod:`wire.messages`) over one pinned httpx client."""

    base_url: str
    ssl_context: ssl.SSLContext
    pin: ServerPin
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout: httpx.Timeout = field(default_factory=lambda: httpx.Timeout(60.0, connect=10.0))
    stop: threading.Event = field(default_factory=threading.Event)
    rng: random.Random = field(default_factory=random.SystemRandom)
    transport: httpx.BaseTransport | None = None
    reloader: TlsReloader | None = None
    poll_grace_s: float = 10.0  # a long poll still unanswered this long after its wait: the connection is dead

    def __post_init__(self) -> None:
        self._client = self._new_client()

    def _new_client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=self.timeout, trust_env=False,
                            transport=self.transport or PinnedTransport(self.ssl_context, self.pin))

    def _reload(self) -> None:
        """After a certificate renewal on disk, drop pooled connections so the next one presents it."""
        if self.reloader is not None and self.reloader.refresh() and self.transport is None:
            old, self._client = self._client, self._new_client()
            old.close()

    def close(self) -> None:
        self._client.close()

    def request(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None,
                timeout: httpx.Timeout | None = None, content: bytes | None = None,
                headers: dict[str, str] | None = None) -> httpx.Response:
        """One call with retries (see the module docstring); returns a 2xx response."""
        attempt = 0
        while True:
            attempt += 1
            self._reload()
            try:
                reply = self._client.request(method, path, json=json, params=params, content=content,
                                             headers=headers, timeout=timeout or self.timeout)
            except httpx.TransportError as exc:
                reason = f"{type(exc).__name__}: {exc or 'no detail'}"
            else:
                if reply.status_code < 400:
                    return reply
                if reply.status_code < 500 and reply.status_code != 429:
                    raise _refusal(reply)
                reason = f"HTTP {reply.status_code}"
            if self.retry.max_attempts and attempt >= self.retry.max_attempts:
                raise ServerUnreachableError(f"{method} {path}: {reason} (gave up after {attempt} attempts)")
            delay = self.retry.delay(attempt, self.rng)
            log.warning("%s %s: %s; retry %d in %.1fs", method, path, reason, attempt, delay)
            if self.stop.wait(delay):
                raise ServerUnreachableError(f"{method} {path}: {reason}; stopped while waiting to retry")

    def _call(self, method: str, path: str, model: type[ModelT], **kwargs: Any) -> ModelT:
        return _parse(self.request(method, path, **kwargs), model)

    # -- the endpoints -------------------------------------------------------------------------------
    def enrol(self, body: EnrolRequest) -> EnrolResponse:
        return self._call("POST", "/v1/enrol", EnrolResponse, json=body.model_dump(mode="json"))

    def public_context(self) -> bytes:
        return self.request("GET", "/v1/context").content

    def report_calibration(self, report: CalibrationReport) -> Ack:
        return self._call("POST", "/v1/calibration", Ack, json=report.model_dump(mode="json"))

    def next_task(self, wait_s: float) -> ScoringTask | None:
        """Long-poll: a task, or None when the server had none within ``wait_s``.

        Read timeout ``wait_s + poll_grace_s`` (at most the general one): see the module docstring.
        """
        general = self.timeout.read
        read = wait_s + self.poll_grace_s if general is None else min(general, wait_s + self.poll_grace_s)
        timeout = httpx.Timeout(connect=self.timeout.connect, read=read, write=self.timeout.write,
                                pool=self.timeout.pool)
        reply = self.request("GET", "/v1/tasks/next", params={"wait": wait_s}, timeout=timeout)
        return None if reply.status_code == 204 else _parse(reply, ScoringTask)

    def decline(self, task_id: str, code: str, reason: str) -> Ack:
        return self._call("POST", f"/v1/tasks/{task_id}/decline", Ack,
                          json=TaskDecline(code=code, reason=reason[:1000]).model_dump(mode="json"))

    def submit(self, submission: Submission) -> Receipt:
        """The JSON form (base64 ciphertexts); :meth:`submit_envelope` is what the agent sends."""
        return self._call("POST", "/v1/submissions", Receipt, json=submission.model_dump(mode="json"))

    def submit_envelope(self, envelope: Envelope) -> Receipt:
        """The binary form (raw ciphertexts, ``POST /v1/submissions/binary``): a third fewer bytes than JSON and
        no base64 on either side (issue 14 §6). A server without that route (404/405 ``not_found`` /
        ``method_not_allowed``: older than the route) gets the same envelope as JSON."""
        try:
            return self._call("POST", "/v1/submissions/binary", Receipt, content=envelope.to_binary(),
                              headers={"content-type": BINARY_MEDIA_TYPE})
        except ServerRefusedError as exc:
            if (exc.status, exc.code) not in {(404, "not_found"), (405, "method_not_allowed")}:
                raise
        return self.submit(Submission(task_id=envelope.task_id, envelope=envelope.to_dict()))

    def checkpoint(self) -> SignedCheckpoint:
        return self._call("GET", "/v1/audit/checkpoint", SignedCheckpoint)

    def inclusion_proof(self, index: int) -> SignedInclusionProof:
        return self._call("GET", f"/v1/audit/proof/{index}", SignedInclusionProof)


def _parse(reply: httpx.Response, model: type[ModelT]) -> ModelT:
    try:
        return model.model_validate_json(reply.content)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(body)"
        raise ChannelError(f"{reply.request.method} {reply.request.url.path}: server reply is not a valid "
                           f"{model.__name__}: {where}: {first['msg']}") from None


def _refusal(reply: httpx.Response) -> ServerRefusedError:
    try:
        body = ErrorBody.model_validate_json(reply.content)
        code, message = body.code, body.message
    except ValidationError:
        code, message = "http_error", reply.text[:200] or reply.reason_phrase
    return ServerRefusedError(reply.status_code, code, f"{reply.request.method} {reply.request.url.path}: {message}")
