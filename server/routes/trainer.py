"""The trainer's routes: readiness of the service's run, and GRPO rounds keyed ``(run, step, rank)``.

Only ``trainer`` certificates are answered (403 ``trainer_only`` otherwise, audited as
``reject.trainer_only``): a member must not open rounds that ask its peers to score text of its
choosing, nor read fused rewards; an auditor reads the log, not the rewards. Without
``--training`` the service runs no training and says so (409 ``no_training``). What the
rounds guarantee is :mod:`server.trainer_rounds`'s docstring; the messages are :mod:`wire.trainer`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from server.admission import Caller
from server.rejections import Rejection
from server.round_transport import RoundKey
from server.routes.common import services_of, trainer_caller
from server.trainer_rounds import TrainerRounds
from wire.messages import Ack
from wire.trainer import RUN_ID_PATTERN, TrainerRound, TrainerRoundRequest, TrainerRun, TrainerStep

router = APIRouter(prefix="/v1/trainer", tags=["trainer"])
Trainer = Annotated[Caller, Depends(trainer_caller)]


def _rounds(request: Request) -> TrainerRounds:
    rounds: TrainerRounds | None = getattr(request.app.state, "trainer_rounds", None)
    if rounds is None:
        raise Rejection(409, "no_training", "this service runs no training: start it with "
                                            "`mor server serve --config ... --training training.toml`")
    return rounds


def _wait(request: Request, wait: float) -> float:
    most = services_of(request).long_poll_max_s
    if wait > most:
        raise Rejection(422, "validation_error", f"query.wait: at most {most} seconds")
    return wait


@router.get("/run", response_model=TrainerRun, summary="Is the service ready for GRPO rounds?")
async def run_state(request: Request, caller: Trainer,
                    wait: Annotated[float, Query(ge=0, description="seconds to wait for readiness")] = 0.0,
                    ) -> TrainerRun:
    return await _rounds(request).run_async(_wait(request, wait))


@router.post("/rounds", response_model=TrainerRound, summary="Open (or find) the round of one rank's step",
             responses={202: {"description": "the round is open"}})
async def open_round(body: TrainerRoundRequest, request: Request, response: Response, caller: Trainer) -> TrainerRound:
    state = await run_in_threadpool(_rounds(request).open, caller.identity, body)
    response.status_code = 202 if state.status == "open" else 200
    return state


@router.get("/rounds/{run_id}/{step}/{rank}", response_model=TrainerRound, summary="Long-poll a round's result",
            responses={202: {"description": "still open after `wait` seconds"}})
async def round_result(request: Request, response: Response, caller: Trainer,
                       run_id: Annotated[str, Path(pattern=RUN_ID_PATTERN)],
                       step: Annotated[int, Path(ge=0, le=2**53 - 1)], rank: Annotated[int, Path(ge=0, lt=4096)],
                       wait: Annotated[float, Query(ge=0, description="seconds to wait for the result")] = 0.0,
                       ) -> TrainerRound:
    rounds = _rounds(request)
    state = await rounds.result_async(RoundKey(run_id, step, rank), _wait(request, wait))
    response.status_code = 202 if state.status == "open" else 200
    return state


STEP_ACTIONS = {"step": "grpo.step", "finished": "training.finished", "stopped": "training.stopped"}


@router.post("/steps", response_model=Ack, summary="Record the main rank's progress in the service's audit log")
async def record_step(body: TrainerStep, request: Request, caller: Trainer) -> Ack:
    _rounds(request)  # a service that runs no training records no progress either
    details = body.model_dump(exclude={"event"}, exclude_none=True)
    entry = await run_in_threadpool(services_of(request).audit.record, caller.identity, STEP_ACTIONS[body.event],
                                    details)
    return Ack(audit_index=entry.index)
