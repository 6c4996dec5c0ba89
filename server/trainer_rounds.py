"""The service's side of remote trainers: GRPO rounds keyed ``(run, step, rank)``, run in the service.

``mor server serve --training training.toml`` prepares the run itself (agents, calibration,
router: the stages of :mod:`server.trainer`) and then answers the trainer ranks through
:mod:`server.routes.trainer` with this object. Why each rule:

* **Ranks never block each other.** Each round runs in its own worker thread (the coordinator
  waits for members there), so rank 0's round and rank 1's round are open at the same time and
  each rank only long-polls its own key.
* **A dead rank leaves nothing open.** The round belongs to the service, not to the HTTP
  request that opened it: it closes at its deadline (``round.fused`` or ``round.skipped`` from
  the coordinator) whether or not a rank ever fetches it. A round nobody fetched within one
  more deadline is audited once as ``trainer.round.unclaimed``.
* **Members never score a step twice.** A request for a key that is open or already done with
  the *same* completions (digest of the items) is answered from that round (``replayed``): a
  restarted rank replaying a step that was fused but not checkpointed costs members nothing.
  Different completions under the same key (the replay sampled anew) open a new round, audited
  as ``trainer.round.replaced``. Steps already checkpointed are never asked again: the trainer
  resumes after them. Results are remembered for the last :data:`REMEMBERED` rounds, in memory:
  a service restart forgets them (and closes open rounds, ``round.abandoned``).
* **Rounds in flight are bounded.** At most :data:`MAX_IN_FLIGHT` rounds run or wait for a
  worker at once (replaced and forgotten ones included); past that a new key is refused 429
  ``too_many_rounds``. Without it each request queued another round, its completions held in
  memory and then put to every member: a runaway (or stolen) trainer certificate grew the
  service's memory and the members' scoring work without bound.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from corpus.types import Prompt
from server.errors import ShutdownRequested
from server.rejections import Rejection
from server.round_transport import RoundKey
from server.rounds import RoundCoordinator, RoundResult
from server.services import AuditTrail, Services
from wire.trainer import TrainerRound, TrainerRoundRequest, TrainerRun

if TYPE_CHECKING:
    from server.training_config import TrainingSection

REMEMBERED = 4096
MAX_WORKERS = 64  # rounds open at once (ranks x steps in flight); more wait for a worker
READY_POLL_S = 0.1  # how often a rank's wait for readiness re-reads the run's stage
MAX_IN_FLIGHT = 2 * MAX_WORKERS  # rounds running or queued; past it a new round is refused 429


def prompt_set_sha256(prompts: Sequence[Prompt]) -> str:
    """A digest of the prompt set (ids, questions, image pixels): trainer and service must load the same one."""
    digest = hashlib.sha256()
    for p in prompts:
        digest.update(json.dumps([p.prompt_id, p.question, p.image.mode, p.image.size]).encode())
        digest.update(hashlib.sha256(p.image.tobytes()).digest())
    return digest.hexdigest()


def items_sha256(request: TrainerRoundRequest) -> str:
    return hashlib.sha256(json.dumps([request.prompt_ids, [i.model_dump() for i in request.items]],
                                     sort_keys=True).encode()).hexdigest()


@dataclass
class _Entry:
    digest: str
    future: Future[RoundResult]
    trainer: str
    done_at: float | None = None
    claimed: bool = False
    flagged: bool = False
    replays: int = field(default=0)


class TrainerRounds:
    """Readiness of the service's run, and the rounds its trainer ranks open (see the module docstring)."""

    def __init__(self, *, audit: AuditTrail, deadline_s: float, actor: str = "server", max_items: int = 4096) -> None:
        self.audit, self.deadline_s, self.actor, self.max_items = audit, deadline_s, actor, max_items
        self.stage = "waiting for agents"
        self.error: str | None = None
        self.coordinator: RoundCoordinator | None = None
        self.prompts: dict[str, Prompt] = {}
        self.prompts_sha256: str | None = None
        self._changed = threading.Condition()
        self._entries: OrderedDict[RoundKey, _Entry] = OrderedDict()
        self._in_flight = 0  # futures not done, whether or not their entry is still remembered
        self._pool = ThreadPoolExecutor(max_workers=MAX_WORKERS, thread_name_prefix="trainer-round")

    # -- the run's stages (set by the preparing thread) ------------------------------------------------
    def set_stage(self, stage: str) -> None:
        with self._changed:
            self.stage = stage
            self._changed.notify_all()

    def set_ready(self, coordinator: RoundCoordinator, prompts: Sequence[Prompt]) -> None:
        digest = prompt_set_sha256(prompts)  # hashing every image: outside the lock the event loop's reads take
        with self._changed:
            self.coordinator, self.prompts = coordinator, {p.prompt_id: p for p in prompts}
            self.prompts_sha256, self.stage = digest, "ready"
            self._changed.notify_all()

    def fail(self, error: str) -> None:
        with self._changed:
            self.stage, self.error = "failed", error
            self._changed.notify_all()

    def run(self, wait_s: float = 0.0) -> TrainerRun:
        with self._changed:
            self._changed.wait_for(lambda: self.coordinator is not None or self.error is not None, timeout=wait_s)
            router = self.coordinator.router.digest() if self.coordinator is not None else None
            return TrainerRun(ready=self.coordinator is not None, stage=self.stage, prompts_sha256=self.prompts_sha256,
                              n_prompts=len(self.prompts), router_digest=router, deadline_s=self.deadline_s,
                              error=self.error)

    # -- rounds ----------------------------------------------------------------------------------------
    def open(self, trainer: str, request: TrainerRoundRequest) -> TrainerRound:
        """Open the round for the request's key (or find it: see the module docstring); never blocks on members."""
        coordinator = self.coordinator
        if coordinator is None:
            raise Rejection(409, "not_ready", f"the service's training run is not ready (stage: {self.stage})")
        unknown = sorted({pid for pid in request.prompt_ids if pid not in self.prompts})
        if unknown:
            raise Rejection(422, "unknown_prompt", f"prompt ids {unknown[:3]} are not in the service's prompt set")
        if len(request.items) > self.max_items:  # members would refuse the vector: refuse the round instead
            raise Rejection(422, "too_many_items", f"items: {len(request.items)} completions, the policy's score "
                                                   f"vectors hold at most {self.max_items}")
        bad = [k for k, item in enumerate(request.items) if item.prompt_index >= len(request.prompt_ids)]
        if bad:
            raise Rejection(422, "validation_error", f"items[{bad[0]}].prompt_index: only "
                                                     f"{len(request.prompt_ids)} prompt ids")
        # every listed prompt's image goes to every member: a prompt listed twice or used by no item only
        # multiplied the task each member downloads (4096 copies of one image from a 4 MB request)
        if len(set(request.prompt_ids)) != len(request.prompt_ids):
            raise Rejection(422, "duplicate_prompt", "prompt_ids: list each prompt once (items point to it by index)")
        unused = sorted(set(range(len(request.prompt_ids))) - {item.prompt_index for item in request.items})
        if unused:
            raise Rejection(422, "unused_prompt", f"prompt_ids[{unused[0]}]: no item points to it "
                                                  f"({len(unused)} unused)")
        key, digest = RoundKey(request.run_id, request.step, request.rank), items_sha256(request)
        self._sweep()
        with self._changed:
            entry = self._entries.get(key)
            if entry is not None and entry.digest == digest:
                entry.replays += 1
                self.audit.record(trainer, "trainer.round.replayed", {**_key(key), "items_sha256": digest})
                return self._state(key, entry, replayed=True)
            if self._in_flight >= MAX_IN_FLIGHT:
                raise Rejection(429, "too_many_rounds", f"{self._in_flight} rounds are in flight, at most "
                                                        f"{MAX_IN_FLIGHT}: fetch their results before opening more")
            if entry is not None:
                self.audit.record(trainer, "trainer.round.replaced", {**_key(key), "items_sha256": digest,
                                                                      "previous_items_sha256": entry.digest})
            prompts = [self.prompts[pid] for pid in request.prompt_ids]
            self._in_flight += 1
            future = self._pool.submit(coordinator.run_round, "score", prompts, list(request.items))
            entry = _Entry(digest, future, trainer)
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > REMEMBERED:
                self._entries.popitem(last=False)
        self.audit.record(trainer, "trainer.round.requested", {**_key(key), "items_sha256": digest,
                                                               "n_items": len(request.items)})
        future.add_done_callback(lambda _f: self._done(key, entry))
        return self._state(key, entry)

    def result(self, key: RoundKey, wait_s: float) -> TrainerRound:
        """The round's state, waiting up to ``wait_s`` for it to finish; 404 for a key never opened (or forgotten)."""
        entry = self._entry(key)
        wait([entry.future], timeout=wait_s)  # never raises: the outcome is read by _state
        return self._claimed(key, entry)

    async def result_async(self, key: RoundKey, wait_s: float) -> TrainerRound:
        """:meth:`result` for the event loop (the route): the wait holds no worker thread.

        Why: each rank long-polls for up to 20 s; in a worker thread each poll held one of the
        pool's 40 threads, in which members' submissions are also stored — with enough ranks the
        submissions the rounds wait for queued behind the polls waiting for them.
        """
        entry = self._entry(key)
        if not entry.future.done():
            waiter = asyncio.wrap_future(entry.future)
            waiter.add_done_callback(lambda f: f.cancelled() or f.exception())  # read by _state; not logged
            await asyncio.wait({waiter}, timeout=wait_s)  # a timeout or a gone client never cancels the round
        return self._claimed(key, entry)

    async def run_async(self, wait_s: float) -> TrainerRun:
        """:meth:`run` for the event loop: waits for readiness without holding a worker thread (as above)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            state = self.run(0.0)
            left = deadline - loop.time()
            if state.ready or state.error is not None or left <= 0:
                return state
            await asyncio.sleep(min(READY_POLL_S, left))

    def _entry(self, key: RoundKey) -> _Entry:
        with self._changed:
            entry = self._entries.get(key)
        if entry is None:
            raise Rejection(404, "unknown_round", f"no round {key.run_id}/{key.step}/{key.rank} (never opened, or "
                                                  f"older than the last {REMEMBERED})")
        return entry

    def _claimed(self, key: RoundKey, entry: _Entry) -> TrainerRound:
        state = self._state(key, entry)
        if state.status != "open":
            entry.claimed = True
        return state

    def _done(self, key: RoundKey, entry: _Entry) -> None:
        entry.done_at = time.monotonic()
        with self._changed:
            self._in_flight -= 1
            self._changed.notify_all()

    def _sweep(self) -> None:
        """Audit, once each, rounds done for over a deadline that no rank fetched (the rank that asked died)."""
        now = time.monotonic()
        with self._changed:  # ranks open rounds from several request threads at once
            entries = list(self._entries.items())
        for key, entry in entries:
            if entry.done_at is not None and not entry.claimed and not entry.flagged \
                    and now - entry.done_at > self.deadline_s:
                entry.flagged = True
                state = self._state(key, entry)
                self.audit.record(self.actor, "trainer.round.unclaimed", {**_key(key), "round_id": state.round_id,
                                                                          "status": state.status,
                                                                          "trainer": entry.trainer})

    def _state(self, key: RoundKey, entry: _Entry, *, replayed: bool = False) -> TrainerRound:
        base = TrainerRound(run_id=key.run_id, step=key.step, rank=key.rank, status="open", replayed=replayed)
        if not entry.future.done():
            return base
        error = None if entry.future.cancelled() else entry.future.exception()
        if entry.future.cancelled() or error is not None:  # member faults are skipped rounds; this is the service's
            what = type(error).__name__ if error is not None else "cancelled"
            return base.model_copy(update={"status": "skipped", "reason": f"round failed in the service: {what}"})
        r = entry.future.result()
        return base.model_copy(update={
            "status": "fused" if r.status == "fused" else "skipped", "round_id": r.round_id, "reason": r.reason,
            "rewards": r.rewards, "agents_asked": list(r.agents_asked), "agents_answered": list(r.agents_answered),
            "agents_used": list(r.agents_used), "weights": dict(r.weights), "refused": dict(r.refused)})

    def close(self) -> None:
        """Stop taking rounds; rounds in flight finish (they close at their deadline at the latest)."""
        self._pool.shutdown(wait=False, cancel_futures=True)


def _key(key: RoundKey) -> dict[str, object]:
    return {"run_id": key.run_id, "step": key.step, "rank": key.rank}


def _stoppable(stop: Callable[[], str | None]) -> Callable[[float], None]:
    """The coordinator's sleep in the service: ShutdownRequested once the process is stopping.

    Why: worker threads are joined at exit, so a round still waiting for members would hold the
    service's shutdown for the rest of its deadline; it is left open instead and the runner
    closes it as ``round.abandoned``.
    """

    def sleep(seconds: float) -> None:
        reason = stop()
        if reason is not None:
            raise ShutdownRequested(reason)
        time.sleep(seconds)

    return sleep


def prepare_in_background(services: Services, config: TrainingSection, rounds: TrainerRounds,
                          stop: Callable[[], str | None]) -> threading.Thread:
    """``mor server serve --training``: run stages 0-3 in a thread, then open ``rounds`` to the trainer ranks.

    A failure is recorded (``training.failed``) and told to the ranks (``GET /v1/trainer/run``
    answers with the error), and the API keeps serving; a stop request ends the wait quietly.
    """
    from server.trainer import prepare_run

    def prepare() -> None:
        try:
            prepared = prepare_run(services, config, stop=stop, show_progress=False, stage=rounds.set_stage)
        except ShutdownRequested:
            rounds.fail("the service is stopping")
            return
        except Exception as exc:  # noqa: BLE001 - recorded and shown to the ranks, not lost in a thread
            services.audit.record(rounds.actor, "training.failed", {"error": f"{type(exc).__name__}: {exc}"})
            rounds.fail(f"{type(exc).__name__}: {exc}")
            return
        prepared.coordinator.sleep = _stoppable(stop)  # a stop ends rounds in flight now, not at their deadline
        rounds.set_ready(prepared.coordinator, prepared.prompts)
        services.audit.record(rounds.actor, "trainer.rounds.ready", {
            "prompts_sha256": rounds.prompts_sha256, "router_digest": prepared.coordinator.router.digest()})

    thread = threading.Thread(target=prepare, name="mor-training-stages", daemon=True)
    thread.start()
    return thread
