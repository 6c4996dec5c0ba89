"""How a GRPO reward call reaches a federated round: one interface, two transports.

:class:`~server.federated_reward.FederatedReward` turns TRL's reward call into prompts and
items and asks a :class:`RoundTransport` for the fused rewards of round ``key``:

* :class:`InProcessRounds` — ``mor server run``: the trainer and the service share a process,
  so the call goes straight to the :class:`~server.rounds.RoundCoordinator`;
* :class:`RemoteRounds` — ``mor server train`` (one process per rank, e.g. under
  ``accelerate launch``): the call goes over mutual TLS to the service, which runs the same
  coordinator (:mod:`server.trainer_rounds`).

Why the key is ``(run, step, rank)``: TRL calls the reward function on every rank with that
rank's own completions and gathers the rewards afterwards, so one round per rank per step asks
members about each completion exactly once and no rank waits on a round it did not need. The
key also makes a repeated request (a restarted rank replaying a step whose round was already
fused) answer from the fused round instead of asking members again.

Opening and fetching are separate calls for the remote transport (the round runs in the
service whatever happens to the rank that asked: it closes at its deadline, so a rank that
dies mid-step never leaves a round open), and the fetch is a long-poll the rank repeats until
the round is done.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from corpus.types import Prompt
from server.errors import RewardError
from server.rounds import RoundCoordinator, RoundResult
from wire.messages import TaskItem
from wire.trainer import TrainerRound, TrainerRoundRequest, TrainerRun, TrainerStep

POLL_WAIT_S = 20.0  # one long-poll; the service caps it at its long_poll_max_s
RETRIES = 4  # a dropped connection is retried after 1, 2, 4, 8 s


@dataclass(frozen=True)
class RoundKey:
    """Which round a reward call is: the run, TRL's global step when it was called, the calling rank."""

    run_id: str
    step: int
    rank: int


class RoundTransport(Protocol):
    """Fused rewards for ``items`` (each pointing into ``prompt_ids``), one per item, in order."""

    def score(self, key: RoundKey, prompt_ids: Sequence[str], items: Sequence[TaskItem]) -> RoundResult: ...


class InProcessRounds:
    """The coordinator in this process (``mor server run``); the key only labels the call."""

    def __init__(self, coordinator: RoundCoordinator, prompts: Sequence[Prompt]) -> None:
        self.coordinator = coordinator
        self.prompts = {p.prompt_id: p for p in prompts}

    def score(self, key: RoundKey, prompt_ids: Sequence[str], items: Sequence[TaskItem]) -> RoundResult:
        return self.coordinator.run_round("score", [self.prompts[pid] for pid in prompt_ids], items)


def round_result(reply: TrainerRound) -> RoundResult:
    """The coordinator's :class:`RoundResult` from the service's answer (the same fields)."""
    if reply.status == "open":
        raise RewardError(f"round {reply.run_id}/{reply.step}/{reply.rank} is still open")
    return RoundResult(reply.round_id or "", "score", reply.status, tuple(reply.agents_asked),
                       tuple(reply.agents_answered), tuple(reply.agents_used), rewards=reply.rewards,
                       weights=dict(reply.weights), refused=dict(reply.refused), reason=reply.reason)


def _reply(response: httpx.Response, what: str) -> dict[str, Any]:
    if response.status_code in (200, 202):
        data: dict[str, Any] = response.json()
        return data
    try:
        body = response.json()
        detail = f"{body['code']}: {body['message']}"  # wire.messages.ErrorBody
    except (ValueError, KeyError, TypeError):
        detail = response.text
    raise RewardError(f"{what}: the service answered {response.status_code}: {str(detail)[:300]}")


class RemoteRounds:
    """The service over mutual TLS (``mor server train``): open the round, then long-poll its result.

    A dropped connection is retried (:data:`RETRIES` times, backing off): both calls are safe to
    repeat, since opening a key again with the same completions finds the round already open.
    """

    def __init__(self, http: httpx.Client, *, poll_wait_s: float = POLL_WAIT_S,
                 give_up_after_s: float = 3600.0) -> None:
        self.http, self.poll_wait_s, self.give_up_after_s = http, poll_wait_s, give_up_after_s

    def _call(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        for attempt in range(RETRIES + 1):
            try:
                return _reply(self.http.request(method, url, **kwargs), f"{method} {url}")
            except httpx.TransportError as exc:
                if attempt == RETRIES:
                    raise RewardError(f"{method} {url}: cannot reach the service at {self.http.base_url}: "
                                      f"{type(exc).__name__}: {exc}") from None
                time.sleep(2.0 ** attempt)
        raise AssertionError("unreachable")

    def run(self, wait_s: float = 0.0) -> TrainerRun:
        """The service's training run (ready once its calibration and router stages are done)."""
        return TrainerRun.model_validate(self._call("GET", "/v1/trainer/run", params={"wait": wait_s}))

    def wait_ready(self, timeout_s: float) -> TrainerRun:
        """Block until the service is ready for GRPO rounds; RewardError if it failed or ``timeout_s`` passed."""
        deadline = time.monotonic() + timeout_s
        while True:
            run = self.run(min(self.poll_wait_s, max(0.0, deadline - time.monotonic())))
            if run.ready:
                return run
            if run.error is not None:
                raise RewardError(f"the service's training run failed: {run.error}")
            if time.monotonic() >= deadline:
                raise RewardError(f"the service was not ready within {timeout_s:.0f} s (stage: {run.stage})")

    def report(self, record: TrainerStep) -> None:
        """Have the service audit the main rank's progress (``grpo.step``, ``training.finished|stopped``)."""
        self._call("POST", "/v1/trainer/steps", json=record.model_dump(mode="json"))

    def score(self, key: RoundKey, prompt_ids: Sequence[str], items: Sequence[TaskItem]) -> RoundResult:
        request = TrainerRoundRequest(run_id=key.run_id, step=key.step, rank=key.rank, prompt_ids=list(prompt_ids),
                                      items=list(items))
        where = f"/v1/trainer/rounds/{key.run_id}/{key.step}/{key.rank}"
        reply = TrainerRound.model_validate(self._call("POST", "/v1/trainer/rounds",
                                                       json=request.model_dump(mode="json")))
        deadline = time.monotonic() + self.give_up_after_s
        while reply.status == "open":
            if time.monotonic() >= deadline:
                raise RewardError(f"round {where}: no result after {self.give_up_after_s:.0f} s")
            reply = TrainerRound.model_validate(self._call("GET", where, params={"wait": self.poll_wait_s}))
        return round_result(reply)
