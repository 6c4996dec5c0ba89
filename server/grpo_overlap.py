"""Scoring overlapped with generation: a slice's federated round starts as soon as its completions exist.

TRL 1.16's ``GRPOTrainer._generate_and_score_completions`` generates, runs the policy's and the
reference model's forward passes over the completions (old and reference log-probabilities),
and only then calls the reward functions and waits for them. A federated round is mostly
waiting (members score on their own machines), so the trainer's accelerator sat idle for the
whole round. We overlap without patching TRL, with a subclass that hooks two of its methods:

* ``_generate`` (called once per generation batch with every prompt of it) generates the batch
  in ``rounds_per_generation`` slices (at most ``steps_per_generation``, each then the size one
  optimisation step trains on) and submits each slice's round to a worker thread the moment
  that slice is decoded. Round *k* runs while slice *k+1* is generated, and the last round
  while TRL computes the log-probabilities of the whole batch;
* TRL's reward call (after those forward passes) only collects the slices' rewards, in order.

Why this is correct, and the other designs were not taken (docs/architecture.md, "Scoring
overlapped with generation"):

* **A reward is only ever used for its own completion.** TRL hands the reward function the very
  list ``_generate`` returned; we check it is that object and that the ``prompt_id`` column is
  the one the slices were scored with, else :class:`~server.errors.RewardError` — never a
  silent re-score or a misaligned reward.
* **Members score each completion once.** Every completion is in exactly one slice; a batch TRL
  scores that did not pass through the hook (evaluation, a future TRL path) is scored by the
  plain synchronous call instead, never in addition. Slice *k* of the batch generated at global
  step *s* is round ``(run, s + k, rank)``: steps ``s .. s+S-1`` are exactly the steps that
  batch trains, so keys never collide with another batch's.
* **On-policy stays on-policy; loss, KL, advantages stay TRL's.** Nothing is generated before
  TRL asks for it, so no completion comes from a stale policy; with ``steps_per_generation >
  1`` the later steps of a batch are TRL's own off-policy reuse, corrected by TRL's
  ``old_per_token_logps`` (computed after generation, as without overlap).
  One-step-off-policy pipelining (generating batch *j+1* while batch *j*'s round runs and
  training on *j*) was rejected: TRL would compute the behaviour policy's log-probabilities
  after the update, under the wrong policy, and its correction for stale samples exists only
  for vLLM. Threads that generate while the optimiser updates the same weights would sample
  from no well-defined policy.
* **Chunks are whole steps, not smaller.** A chunk below one step's batch would need a round key
  below the step (a wire change) and costs generation throughput on a GPU; one slice per
  step keeps the members' round size and the service's ``(run, step, rank)`` keys unchanged.

With ``steps_per_generation = 1`` there is one slice: the round overlaps the log-probability
forward passes only. With S > 1 it also overlaps generation of the next S-1 slices — at the
price of S rounds per batch instead of one, each with the members' per-round costs (a CKKS
vector is sealed per round, whatever its length). ``rounds_per_generation`` (a divisor of S)
trades the two: 1 (the default) = one round per batch, overlapping the log-probability passes
only; S = one per step's slice (measured 1.30-1.45x the sequential step on 2 shared CPU cores).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from server.errors import RewardError

Scores = list[float | None]
__all__ = ["OverlapRecord", "ScoringPipeline", "overlapped_trainer"]


@dataclass(frozen=True)
class SliceStep:
    """What a slice's reward call sees as ``trainer_state``: the step its round is keyed by."""

    global_step: int


@dataclass
class OverlapRecord:
    """One generation batch: how long its rounds ran and how long TRL's reward call still waited."""

    step: int
    slices: int
    overlapped: bool
    round_s: float  # sum over slices of (round done - round submitted)
    exposed_s: float  # how long TRL's reward call blocked: the part of the rounds left on the critical path

    @property
    def hidden_share(self) -> float:
        return 0.0 if self.round_s <= 0 else max(0.0, 1.0 - self.exposed_s / self.round_s)


@dataclass
class _Slice:
    future: Future[Scores]
    prompt_ids: list[Any]
    submitted: float
    metrics: list[tuple[str, float]] = field(default_factory=list)
    done: float = 0.0


@dataclass
class _Batch:
    step: int
    completions: list[Any]
    slices: list[_Slice]


def _merge(parts: Sequence[tuple[Any, ...]]) -> tuple[Any, ...]:
    """Concatenate the per-slice results of TRL's ``_generate`` (8 fields; tools and rollouts are not sliced)."""

    def cat(index: int) -> Any:
        values = [p[index] for p in parts]
        if all(v is None for v in values):
            return None
        out: list[Any] = []
        for part, v in zip(parts, values, strict=True):
            out.extend([None] * len(part[3]) if v is None else list(v))
        return out

    extra_fields = {k: v for p in parts for k, v in p[5].items()}
    return (cat(0), cat(1), cat(2), cat(3), cat(4), extra_fields, cat(6), [t for p in parts for t in p[7]])


class ScoringPipeline:
    """Starts each slice's round on a worker thread; :meth:`reward_function` is what TRL calls.

    ``reward_fn`` is called exactly as TRL would call it, once per slice, with ``trainer_state``
    a :class:`SliceStep`. ``slices_for(step)`` says in how many rounds the batch generated at
    ``step`` is scored (at most ``slices``, the batch's steps, so keys stay in its step range;
    0: not overlapped, TRL's plain call). Default: ``slices``; the bench varies it per batch to
    time the variants in one run.
    """

    def __init__(self, reward_fn: Callable[..., Scores], *, slices: int,
                 slices_for: Callable[[int], int] | None = None) -> None:
        if slices < 1:
            raise ValueError(f"slices={slices}: must be >= 1")
        self.reward_fn, self.slices = reward_fn, slices
        self.slices_for = slices_for or (lambda _step: slices)
        self.records: list[OverlapRecord] = []
        self._pool = ThreadPoolExecutor(max_workers=slices, thread_name_prefix="mor-round")
        self._inputs: tuple[int, int, list[dict[str, Any]]] | None = None
        self._batch: _Batch | None = None
        self._lock = threading.Lock()

    # -- hooks called by the trainer subclass ---------------------------------------------------------
    def begin(self, inputs: list[dict[str, Any]], step: int, *, sliceable: bool) -> None:
        """A training batch is about to be generated: remember its rows (TRL's columns) if we may slice it."""
        n = min(self.slices, self.slices_for(step)) if sliceable else 0
        self._inputs = (step, n, inputs) if n > 0 and len(inputs) % n == 0 else None
        self._batch = None

    def end(self) -> None:
        self._inputs, self._batch = None, None

    def generate(self, generate: Callable[[list[Any]], tuple[Any, ...]], prompts: list[Any]) -> tuple[Any, ...]:
        """TRL's ``_generate``, one slice at a time, each slice's round submitted as soon as it is decoded."""
        if self._inputs is None or len(prompts) != len(self._inputs[2]):
            return generate(prompts)
        step, n, rows = self._inputs
        self._inputs = None  # one generation per batch
        size = len(prompts) // n
        parts, slices = [], []
        for k in range(n):
            part = generate(prompts[k * size:(k + 1) * size])
            piece = slice(k * size, (k + 1) * size)
            slices.append(self._submit(step + k, part, prompts[piece], rows[piece]))
            parts.append(part)
        merged = _merge(parts)
        self._batch = _Batch(step, merged[3], slices)
        return merged

    def _submit(self, step: int, part: tuple[Any, ...], prompts: list[Any], rows: list[dict[str, Any]]) -> _Slice:
        completions = part[3]  # the prompts are TRL's (images inlined), as its own reward call passes them
        columns = {k: [r[k] for r in rows] for k in rows[0] if k not in ("prompt", "completion", "completion_ids")}
        metrics: list[tuple[str, float]] = []

        def score() -> Scores:
            try:
                return self.reward_fn(prompts=prompts, completions=completions, completion_ids=part[1],
                                      trainer_state=SliceStep(step), log_metric=lambda n, v: metrics.append((n, v)),
                                      log_extra=lambda _c, _v: None, **columns)
            finally:
                entry.done = time.perf_counter()

        entry = _Slice(Future(), columns.get("prompt_id", []), time.perf_counter(), metrics)
        entry.future = self._pool.submit(score)
        return entry

    # -- what TRL calls -------------------------------------------------------------------------------
    def reward_function(self) -> Callable[..., Scores]:
        def mor_reward(prompts: list[Any], completions: list[Any], **columns: Any) -> Scores:
            batch, self._batch = self._batch, None
            start = time.perf_counter()
            if batch is None:  # not sliced (overlap off for this batch, evaluation): the plain synchronous call
                plain = self.reward_fn(prompts, completions, **columns)
                took = time.perf_counter() - start
                step = int(getattr(columns.get("trainer_state"), "global_step", -1))
                self._record(OverlapRecord(step, 1, False, took, took))
                return plain
            if completions is not batch.completions:
                raise RewardError("TRL asked for rewards of completions other than those whose rounds were started")
            wanted = list(columns.get("prompt_id", []))
            scored = [pid for s in batch.slices for pid in s.prompt_ids]
            if wanted != scored:
                raise RewardError("the prompt_id column differs from the one the rounds were started with")
            scores: Scores = []
            for s in batch.slices:
                scores.extend(s.future.result())
            exposed = time.perf_counter() - start
            log_metric: Callable[[str, float], None] = columns.get("log_metric") or (lambda _n, _v: None)
            for s in batch.slices:
                for name, value in s.metrics:
                    log_metric(name, value)
            self._record(OverlapRecord(batch.step, len(batch.slices), True,
                                       sum(s.done - s.submitted for s in batch.slices), exposed))
            return scores

        return mor_reward

    def _record(self, record: OverlapRecord) -> None:
        with self._lock:
            self.records.append(record)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def overlapped_trainer(pipeline: ScoringPipeline, **kwargs: Any) -> Any:
    """TRL's ``GRPOTrainer`` with the two hooks above (the class is built here so TRL is imported lazily)."""
    from trl import GRPOTrainer

    class OverlappedGRPOTrainer(GRPOTrainer):  # type: ignore[misc]
        def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
            model: Any = self.model
            sliceable = (model.training and not self.tools and self.rollout_func is None
                         and self.environment_factories is None)
            pipeline.begin(inputs, int(self.state.global_step), sliceable=sliceable)
            try:
                output: dict[str, Any] = super()._generate_and_score_completions(inputs)
                return output
            finally:
                pipeline.end()

        def _generate(self, prompts: list[Any]) -> tuple[Any, ...]:
            return pipeline.generate(super()._generate, prompts)

    return OverlappedGRPOTrainer(**kwargs)
