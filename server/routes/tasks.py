"""``GET /v1/tasks/next?wait=S``: long-poll for the caller's next scoring task.

Agents only make outbound connections, so the server cannot push: the agent asks and the
request stays open until a task for it exists in the state store (the round coordinator
writes them) or ``wait`` seconds pass (204). The request sleeps until the store says tasks were
issued (:class:`server.round_events.RoundEvents`), then reads the durable store, so a restart
loses nothing; it also re-reads every ``Services.poll_interval_s`` (tasks written by another
process). A re-delivery of a task already delivered writes nothing.

A poll also answers 204 at once when the server is stopping (``Services.stopping``), with
``Connection: close``. uvicorn's graceful shutdown waits for every request in flight *and*
every connection: without the early answer the polls held it for their whole ``wait``, and
without the close header the agent keeps the connection pooled, never answers the server's
TLS close_notify, and the connection lingers until the grace period ends (measured with two
long-polling agents: SIGTERM to exit 5.4 s before, 0.3 s after).
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from server.admission import Caller
from server.rejections import Rejection
from server.routes.common import enrolled_agent, services_of
from server.state import TaskRow
from wire.messages import Ack, ScoringTask, TaskDecline, TaskPayload

router = APIRouter(prefix="/v1", tags=["tasks"])


class _Payloads:
    """Validated payloads of recent rounds: every member of a round gets the same one, validated once.

    Why: validating a stored payload (strict I-JSON on every nested item) cost more server CPU
    per delivery than anything else on the long-poll path (bench section 4). A hit must equal
    the stored payload exactly, so a row that differs is validated on its own.
    """

    def __init__(self, size: int = 64) -> None:
        self._size, self._lock = size, threading.Lock()
        self._rounds: OrderedDict[str, tuple[dict[str, Any], TaskPayload]] = OrderedDict()

    def validated(self, row: TaskRow) -> TaskPayload:
        with self._lock:
            hit = self._rounds.get(row.round_id)
        if hit is not None and hit[0] == row.payload:
            return hit[1]
        payload = TaskPayload.model_validate(row.payload)
        with self._lock:
            self._rounds[row.round_id] = (row.payload, payload)
            while len(self._rounds) > self._size:
                self._rounds.popitem(last=False)
        return payload


_PAYLOADS = _Payloads()


def scoring_task(row: TaskRow, privacy_mode: str) -> ScoringTask:
    """The wire form of a stored task (its payload was written by the coordinator as a TaskPayload)."""
    try:
        payload = _PAYLOADS.validated(row)
    except ValidationError as exc:
        raise Rejection(500, "internal_error", f"task {row.task_id}: stored payload is invalid") from exc
    return ScoringTask(task_id=row.task_id, round_id=row.round_id, kind=payload.kind,
                       privacy_mode=privacy_mode,  # type: ignore[arg-type]
                       prompts=payload.prompts, items=payload.items, issued_at=row.issued_at, deadline=row.deadline)


@router.get("/tasks/next", response_model=ScoringTask, summary="Long-poll for the next scoring task",
            responses={204: {"description": "no task within `wait` seconds"}})
async def next_task(request: Request,
                    agent: Annotated[tuple[Caller, dict[str, Any]], Depends(enrolled_agent)],
                    wait: Annotated[float, Query(ge=0, description="seconds to wait for a task")] = 0.0,
                    ) -> ScoringTask | Response:
    services = services_of(request)
    caller, _ = agent
    if wait > services.long_poll_max_s:
        raise Rejection(422, "validation_error", f"query.wait: at most {services.long_poll_max_s} seconds")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    events = services.state.events
    while True:
        version = events.task_version  # read before the store: a task issued after this wakes the wait below
        row = await run_in_threadpool(services.state.next_task, caller.identity, services.clock())
        if row is not None:
            return scoring_task(row, services.privacy.name)
        if services.stopping.is_set():
            return Response(status_code=204, headers={"Connection": "close"})
        if loop.time() >= deadline or await request.is_disconnected():
            return Response(status_code=204)
        await events.wait_tasks(version, min(services.poll_interval_s, max(0.0, deadline - loop.time())))


@router.post("/tasks/{task_id}/decline", response_model=Ack, summary="Decline a task the agent's local policy refuses")
async def decline_task(task_id: str, body: TaskDecline, request: Request,
                       agent: Annotated[tuple[Caller, dict[str, Any]], Depends(enrolled_agent)]) -> Ack:
    """Without this, a refused task would be re-delivered until its deadline and block newer ones."""
    services = services_of(request)
    caller, _ = agent
    row = await run_in_threadpool(services.state.task, task_id)
    if row is None:
        raise Rejection(404, "unknown_task", f"task {task_id!r} does not exist")
    if row.agent != caller.identity:
        raise Rejection(403, "not_your_task", f"task {task_id!r} was issued to another agent")
    if not await run_in_threadpool(services.state.decline_task, task_id, caller.identity):
        raise Rejection(410, "task_closed", f"task {task_id!r} is no longer open (status {row.status})")
    entry = services.audit.record(caller.identity, "task.declined", {
        "round_id": row.round_id, "task_id": task_id, "code": body.code, "reason": body.reason[:200]})
    return Ack(audit_index=entry.index)
