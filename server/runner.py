"""Running the parties: ``mor server serve``, ``mor server run``, ``mor keyholder serve``.

``mor server serve --training`` runs the training stages in a thread and then serves the rounds
of remote trainer ranks (:mod:`server.trainer_rounds`; the ranks are :mod:`server.remote_trainer`).

Process model of ``mor server run`` — one process, one :class:`audit.AuditLog`, one StateStore:

* The HTTP API (uvicorn) runs in a daemon thread and the training run in the main thread.
  Why this way round: Python delivers signals to the main thread only. uvicorn off the main
  thread installs no handlers, so SIGTERM/SIGINT reach :class:`StopFlag`, which only sets a
  flag. (uvicorn *in* the main thread re-raises the signal after its own shutdown, which kills
  the process before the audit log is closed.) The API thread stops through ``should_exit``.
* Training stops cooperatively; the trainer asks the flag (``stop=``) and decides where:
  before GRPO (waiting for agents, calibration and router rounds) its waits raise
  :class:`~server.errors.ShutdownRequested` and the round that was waiting is closed
  (``round.abandoned``; its tasks expire and late envelopes get 410). During GRPO the step in
  flight finishes — its round was already sent to the agents — and a TrainerCallback ends
  training there with a checkpoint saved, so a restart resumes from exactly that step.
  Either way ``training.stopped`` (reason, step, checkpoint) is recorded; rounds left open by
  a crashed predecessor are closed at start.
* Then the API stops: :attr:`Services.stopping` makes open long-polls answer 204 at once (so
  uvicorn's graceful shutdown, capped at :data:`GRACE_S`, does not wait for idle agents),
  ``server.stopped`` is recorded, the audit log signs its final checkpoint, and the command
  exits 0. A second signal while stopping is only acknowledged: SIGKILL aborts (the audit log
  recovers a torn line at the next start).

Stop latency: before GRPO, about a second (the trainer's longest wait); during GRPO, the rest
of the step in flight (at most the round deadline plus one optimizer step); a stop during
model loading takes effect after the first step.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from sqlalchemy import select

from server.config import ConnectionLimits
from server.errors import ServerError, ShutdownRequested
from server.memory_return import prepare_serving_process
from server.services import Services

log = logging.getLogger("mor.server")
GRACE_S = 5.0
ACTOR = "server"


class StopFlag:
    """SIGTERM/SIGINT -> a flag (handlers installed on enter, restored on exit; main thread only)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self._event.is_set():
            log.warning("already stopping (%s); send SIGKILL to abort", self.reason)
            return
        self.reason = f"signal {signal.Signals(signum).name}"
        log.warning("%s: stopping at the next step boundary", self.reason)
        self._event.set()

    def request(self, reason: str) -> None:
        """Ask for a stop from code (tests, or a fatal condition elsewhere)."""
        self.reason = self.reason or reason
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def requested(self) -> str | None:
        """Why a stop was requested, or None: what the trainer's ``stop=`` asks."""
        return (self.reason or "stop requested") if self._event.is_set() else None

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)


class ServiceThread:
    """One uvicorn server over mutual TLS in a daemon thread; ``limits`` bound its connections (connection_guard)."""

    def __init__(self, app: Any, *, host: str, port: int, ssl_context: Any, log_level: str, name: str,
                 stopping: threading.Event | None = None, limits: ConnectionLimits | None = None) -> None:
        import uvicorn

        from server.connection_guard import ConnectionGate
        from server.mtls import uvicorn_config

        self.name, self.address, self.stopping = name, f"https://{host}:{port}", stopping
        self.host, self.port, limits = host, port, limits or ConnectionLimits()
        self.gate = ConnectionGate(limits)
        self.server = uvicorn.Server(uvicorn_config(app, host=host, port=port, ssl_context=ssl_context,
                                                    log_level=log_level, timeout_graceful_shutdown=int(GRACE_S),
                                                    timeout_keep_alive=limits.idle_timeout_s, gate=self.gate))
        self.listener: Any = None
        self.thread = threading.Thread(target=lambda: self.server.run([self.listener]), name=name, daemon=True)

    def start(self, timeout: float = 60.0) -> None:
        """Start serving; ServerError if it cannot (port taken, bad TLS material) within ``timeout``."""
        from server.connection_guard import listen

        try:
            self.listener = listen(self.host, self.port, self.gate)
        except OSError as exc:
            raise ServerError(f"{self.name}: cannot listen on {self.address}: {exc.strerror or exc}") from None
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise ServerError(f"{self.name}: could not serve on {self.address} (see the log above)")
            time.sleep(0.05)
        log.warning("%s listening on %s", self.name, self.address)

    def alive(self) -> bool:
        return self.thread.is_alive()

    def stop(self) -> None:
        """Release open long-polls, stop accepting, let requests in flight finish (at most GRACE_S), join."""
        if self.stopping is not None:
            self.stopping.set()
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(GRACE_S + 10)
        elif self.listener is not None:
            self.listener.close()  # never served (start failed): uvicorn did not close it


def serve_until_signal(api: ServiceThread, stop: StopFlag) -> str:
    """Block until a stop is requested (returns why); ServerError if the API thread dies first."""
    while not stop.wait(0.5):
        if not api.alive():
            raise ServerError(f"{api.name} stopped unexpectedly (see the log above)")
    return stop.reason


def abandon_open_rounds(services: Services, reason: str) -> list[str]:
    """Close every round still open as skipped (its tasks expire), one ``round.abandoned`` entry each."""
    from server.state_tables import rounds

    with services.state.engine.connect() as conn:
        open_ids = list(conn.execute(select(rounds.c.round_id).where(rounds.c.status == "open")).scalars())
    for round_id in open_ids:
        services.state.close_round(round_id, status="skipped", outcome={"reason": reason, "abandoned": True})
        services.audit.record(ACTOR, "round.abandoned", {"round_id": round_id, "reason": reason})
    return open_ids


def _record_start(services: Services, mode: str, **extra: Any) -> None:
    policy = services.policy
    services.audit.record(ACTOR, "server.started", {
        "mode": mode, "privacy_mode": policy.privacy_mode, "policy_digest": policy.digest,
        "holds_secret_key": services.privacy.holds_secret_key,
        "context_sha256": services.privacy.public_context.sha256 if services.privacy.public_context else None,
        **extra})
    if policy.insecure_reasons:
        services.audit.record(ACTOR, "policy.insecure", {"reasons": list(policy.insecure_reasons)})
        for reason in policy.insecure_reasons:
            log.warning("INSECURE POLICY: %s", reason)


def _api(runtime: Any, app: Any, section: Any, log_level: str, name: str,
         stopping: threading.Event | None = None) -> ServiceThread:
    prepare_serving_process()
    return ServiceThread(app, host=section.host, port=section.port, ssl_context=runtime.ssl_context,
                         log_level=log_level, name=name, stopping=stopping, limits=runtime.config.connections)


def serve(config_path: str | Path, *, log_level: str = "warning", training_path: str | Path | None = None) -> None:
    """``mor server serve``: the HTTP API until SIGTERM/SIGINT; with ``training_path`` also the training
    stages and the rounds of remote trainer ranks (``mor server train``, :mod:`server.trainer_rounds`)."""
    from server.app import create_app
    from server.config import load_server_config
    from server.wiring import open_server

    with StopFlag() as stop:
        training = _training_config(training_path)
        runtime = open_server(load_server_config(config_path))
        reason = "start-up failed"
        try:
            _record_start(runtime.services, "serve", **({} if training_path is None else
                                                      {"training_config": str(Path(training_path).resolve())}))
            app = create_app(runtime.services)
            rounds = _trainer_rounds(runtime.services, app, training)
            api = _api(runtime, app, runtime.config.server, log_level, "mor-server-api", runtime.services.stopping)
            try:
                api.start()
                runtime.serving(api.alive)
                if rounds is not None:
                    from server.trainer_rounds import prepare_in_background

                    prepare_in_background(runtime.services, training, rounds, stop.requested)
                reason = serve_until_signal(api, stop)
            finally:
                api.stop()
                if rounds is not None:
                    rounds.close()
                    abandon_open_rounds(runtime.services, f"server stopping ({reason})")
        finally:
            _close(runtime, ACTOR, "server.stopped", {"reason": reason})


def _training_config(path: str | Path | None) -> Any:
    if path is None:
        return None
    from server.trainer import load_training_config

    return load_training_config(path)


def _trainer_rounds(services: Services, app: Any, training: Any) -> Any:
    """With a training config: the remote trainers' rounds, on the app (rounds left by a predecessor closed)."""
    if training is None:
        return None
    from server.trainer_rounds import TrainerRounds

    abandon_open_rounds(services, "the server restarted: a round of the previous process cannot be fused")
    app.state.trainer_rounds = TrainerRounds(audit=services.audit, deadline_s=training.deadline_s,
                                             max_items=services.policy.max_items)
    return app.state.trainer_rounds


def run(config_path: str | Path, training_path: str | Path, *, log_level: str = "warning",
        keep_serving: bool = False) -> None:
    """``mor server run``: the HTTP API (thread) and the training run (main thread); see the module docstring."""
    from server.app import create_app
    from server.config import load_server_config
    from server.trainer import load_training_config, run_training
    from server.wiring import open_server

    with StopFlag() as stop:
        config = load_server_config(config_path)
        training = load_training_config(training_path)
        runtime = open_server(config)
        services, reason = runtime.services, "start-up failed"
        try:
            _record_start(services, "run", training_config=str(Path(training_path).resolve()))
            abandon_open_rounds(services, "the server restarted: a round of the previous process cannot be fused")
            api = _api(runtime, create_app(services), config.server, log_level, "mor-server-api", services.stopping)
            try:
                api.start()
                runtime.serving(api.alive)
                reason = _train(services, training, config, api, stop, run_training)
                if keep_serving and not stop.is_set():
                    reason = serve_until_signal(api, stop)
            finally:
                api.stop()
        finally:
            _close(runtime, ACTOR, "server.stopped", {"reason": reason})


def _train(services: Services, training: Any, config: Any, api: ServiceThread, stop: StopFlag,
           run_training: Callable[..., Any]) -> str:
    """The training run, told how to sleep and how to ask for a stop; returns why it ended (raises if it failed)."""

    def sleep(seconds: float) -> None:
        time.sleep(seconds)
        if not api.alive():
            raise ServerError(f"{api.name} stopped unexpectedly: agents can no longer reach the server")

    try:
        report = run_training(services, training, sleep=sleep, stop=stop.requested)
    except ShutdownRequested as exc:
        return _training_stopped(services, str(exc) or "stop requested", step=None, checkpoint=None)
    except BaseException as exc:
        services.audit.record(ACTOR, "training.failed", {"error": f"{type(exc).__name__}: {exc}"})
        abandon_open_rounds(services, "training failed")
        raise
    grpo = report.grpo
    if grpo is not None and grpo.stopped_reason is not None:
        return _training_stopped(services, grpo.stopped_reason, step=grpo.global_step,
                                 checkpoint=str(grpo.adapter_path))
    log.warning("training finished: %s steps, adapter %s", len(grpo.steps) if grpo else 0,
                grpo.adapter_path if grpo else None)
    return "training finished"


def _training_stopped(services: Services, reason: str, *, step: int | None, checkpoint: str | None) -> str:
    """``training.stopped`` (step None: stopped before GRPO began), then close what is still open."""
    services.audit.record(ACTOR, "training.stopped", {"reason": reason, "step": step, "checkpoint": checkpoint})
    abandon_open_rounds(services, f"server stopping ({reason})")
    log.warning("training stopped (%s) at step %s; checkpoint %s", reason, step, checkpoint)
    return reason


def _close(runtime: Any, actor: str, action: str, data: dict[str, Any]) -> None:
    """Record the stop, then close the audit log (final signed checkpoint) whatever happens."""
    try:
        runtime.audit.record(actor, action, data)
    finally:
        runtime.close()
        log.warning("%s: %s; audit log closed at %d entries (final checkpoint signed)", actor, data.get("reason"),
                    runtime.audit.size())


def serve_keyholder(config_path: str | Path, *, log_level: str = "warning") -> None:
    """``mor keyholder serve``: the fused-only key holder, until SIGTERM/SIGINT."""
    from server.keyholder.app import create_keyholder_app
    from server.keyholder.config import load_keyholder_config
    from server.wiring import open_keyholder

    with StopFlag() as stop:
        runtime = open_keyholder(load_keyholder_config(config_path))
        reason = "start-up failed"
        try:
            runtime.audit.record("keyholder", "keyholder.started", {
                "context_sha256": runtime.services.owner.public_context.sha256,
                "server_identity": runtime.services.server_identity})
            app = create_keyholder_app(runtime.services)
            api = _api(runtime, app, runtime.config.keyholder, log_level, "mor-keyholder-api")
            try:
                api.start()
                runtime.serving(api.alive)
                reason = serve_until_signal(api, stop)
            finally:
                api.stop()
        finally:
            _close(runtime, "keyholder", "keyholder.stopped", {"reason": reason,
                                                                "decryptions": runtime.services.owner.decryptions})
