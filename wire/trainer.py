"""Messages between the service and its trainer ranks (``mor server train``), API ``v1``.

Only a certificate of role ``trainer`` may call these (members and auditors get 403)::

    GET  /v1/trainer/run?wait=S                 -> TrainerRun   (is the service ready for GRPO rounds?)
    POST /v1/trainer/rounds                     TrainerRoundRequest -> TrainerRound (202: open, 200: done)
    GET  /v1/trainer/rounds/{run}/{step}/{rank}?wait=S -> TrainerRound (200 once done, 202 while open)
    POST /v1/trainer/steps                      TrainerStep -> Ack   (the main rank's progress, audited)

A round is keyed by ``(run_id, step, rank)``: each rank asks for its own completions of one
step, so ranks never wait on each other and members never score a completion twice. The
trainer sends prompt *ids* only — the service holds the prompt set (its digest is audited)
and sends members the images it loaded itself, so a trainer cannot show members anything
outside the consortium's dataset.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from wire.messages import TaskItem, WireModel

RUN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class TrainerRun(WireModel):
    """What the service says of the training run it prepared (calibration and router are its stages)."""

    ready: bool
    stage: str = Field(max_length=200, description="waiting for agents | calibrating | fitting router | ready | failed")
    prompts_sha256: str | None = None
    n_prompts: int = 0
    router_digest: str | None = None
    deadline_s: float = 0.0
    error: str | None = Field(default=None, max_length=2000)


class TrainerRoundRequest(WireModel):
    """One rank's completions of one step: ``prompt_ids[k]`` is the prompt of ``items[k]``'s index."""

    run_id: str = Field(pattern=RUN_ID_PATTERN)
    step: int = Field(ge=0)
    rank: int = Field(ge=0, lt=4096)
    prompt_ids: list[str] = Field(min_length=1, max_length=4096)
    items: list[TaskItem] = Field(min_length=1, max_length=4096)


class TrainerRound(WireModel):
    """A round's state; ``rewards`` (one per item, None where no member scored it) once it is done."""

    run_id: str
    step: int
    rank: int
    status: Literal["open", "fused", "skipped"]
    round_id: str | None = None
    reason: str | None = None
    rewards: list[float | None] | None = None
    agents_asked: list[str] = Field(default_factory=list)
    agents_answered: list[str] = Field(default_factory=list)
    agents_used: list[str] = Field(default_factory=list)
    weights: dict[str, float] = Field(default_factory=dict)
    refused: dict[str, str] = Field(default_factory=dict)
    replayed: bool = Field(default=False, description="answered from a round already fused for this key")


class TrainerStep(WireModel):
    """The main rank's record of one finished step (or of the run's end), audited by the service.

    Why: the service's audit log and status page show GRPO progress (``grpo.step``,
    ``training.finished`` / ``training.stopped``) whether the trainer runs in its process or apart.
    """

    run_id: str = Field(pattern=RUN_ID_PATTERN)
    event: Literal["step", "finished", "stopped"] = "step"
    step: int = Field(ge=0)
    reward: float | None = None
    reward_std: float | None = None
    kl: float | None = None
    agents_answered: float | None = None
    round_skipped: float | None = None
    reason: str | None = Field(default=None, max_length=500)
    adapter: str | None = Field(default=None, max_length=1000)
