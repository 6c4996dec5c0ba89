"""GRPO on the policy VLM: a thin, readable layer over TRL's ``GRPOTrainer``.

TRL does the sampling, the group-relative advantages, the clipped loss and the KL to the
frozen reference; we only choose safe settings, build the dataset, validate what the reward
function returns, and report. Why these choices:

- ``beta > 0`` is enforced: without it TRL drops the reference model and nothing keeps the
  policy from drifting into reward hacking of the federated reward models.
- LoRA by default: the reference is then the base with the adapter disabled (no second copy
  of the model), and the trained artefact is a small adapter.
- Checkpoints every ``save_steps`` and ``resume=True``: a server restart continues from the
  last checkpoint instead of repeating (and re-paying clients for) finished rounds. The
  learning rate is constant, because a decaying schedule restored from a checkpoint of a
  shorter run is already at 0 when the run is extended.
- Checkpoint, dtype, device, attention implementation and LoRA targets are checked by
  :func:`server.vlm.families.check_trainable` before TRL is constructed, so a family or setting
  that cannot work fails at load time with a clear error, not in the middle of training.
  ``dtype`` is the weights' dtype and picks the mixed precision to match (bf16 / fp16 autocast,
  none for float32); LoRA targets default to the language model's attention, per family.
- A clean stop (``stop`` returns a reason, e.g. after SIGTERM) is honoured at a step
  boundary by a TrainerCallback: the step in flight finishes (its federated round was paid
  for), a checkpoint is saved whatever ``save_steps`` says, and the result says where and why.
- Scoring is overlapped with generation (``overlap_scoring``; ``auto``: when the policy runs on
  a GPU): each step's slice of a generation batch is sent to the reward function as soon as it
  is generated, on a worker thread, while TRL generates the next slice and computes
  log-probabilities (:mod:`server.grpo_overlap`, which says why this keeps every reward on its
  own completion). On a CPU the round's work (members, service) competes with generation for
  the same cores, and at the default S=1 the overlap was not faster (docs/benchmarks.md), hence ``auto``.

The reward function is the server's hook: one call = one batch of G completions per prompt,
which the server turns into one federated scoring round. It receives TRL's keyword columns
(``prompt_id``, ``image``, ``completion_ids``, ``log_metric``...); extras it reports through
``log_metric(name, value)`` appear in every step's metrics. Example::

    >>> def contains_gold(prompts, completions, prompt_id, **_):
    ...     return [1.0 if GOLD[pid] in c[0]["content"].lower() else 0.0
    ...             for pid, c in zip(prompt_id, completions)]
    >>> run_grpo(model_path=warm.path, prompts=prompts, reward_fn=contains_gold,
    ...          config=GRPORunConfig(output_dir=Path("runs/grpo")))  # doctest: +SKIP

``None`` is allowed for a completion no client scored (TRL ignores it in the advantage).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from corpus.types import Prompt
from server.errors import GRPOConfigError, RewardError
from server.grpo_overlap import OverlapRecord, ScoringPipeline, overlapped_trainer
from server.vlm.families import LANGUAGE_MODEL_ATTENTION, DType, check_trainable
from server.vlm.load import load_processor

RewardFn = Callable[..., Sequence[float | None]]
StepLogger = Callable[[dict[str, Any]], None]
StopCheck = Callable[[], str | None]  # the reason a stop was requested, or None
__all__ = ["LANGUAGE_MODEL_ATTENTION", "GRPOResult", "GRPORunConfig", "run_grpo"]


@dataclass(frozen=True)
class GRPORunConfig:
    """Settings of one GRPO run; invalid or unsafe values are refused at construction."""

    output_dir: Path
    group_size: int = 4
    learning_rate: float = 5e-5
    max_steps: int = 10
    beta: float = 0.04
    lora_r: int = 8
    lora_alpha: int = 16
    lora_targets: str | tuple[str, ...] | None = None  # None: the language model's attention, detected per family
    use_lora: bool = True
    max_completion_length: int = 32
    per_device_batch: int = 4
    temperature: float = 1.0
    seed: int = 0
    save_steps: int = 1
    dtype: DType = "float32"
    device: str = "auto"  # auto | cpu | cuda
    attn_implementation: str | None = None  # None: transformers' default for the family
    steps_per_generation: int = 1  # TRL's: one generation batch (and one round per step's slice) feeds S steps
    # start each slice's round as soon as it is generated (server.grpo_overlap); auto: when generating on a GPU
    overlap_scoring: bool | Literal["auto"] = "auto"
    rounds_per_generation: int = 1  # overlapped: rounds per generation batch (divides S); S: one per step's slice

    def __post_init__(self) -> None:
        if not (self.beta > 0 and math.isfinite(self.beta)):
            raise GRPOConfigError(f"beta={self.beta}: must be > 0 (the KL penalty to the frozen reference is required)")
        for name in ("group_size", "max_steps", "max_completion_length", "per_device_batch", "save_steps", "lora_r",
                     "steps_per_generation"):
            if getattr(self, name) < 1:
                raise GRPOConfigError(f"{name}={getattr(self, name)}: must be >= 1")
        if self.group_size < 2:
            raise GRPOConfigError(f"group_size={self.group_size}: must be >= 2 (advantages are relative to the group)")
        rounds = self.rounds_per_generation
        if rounds < 1 or self.steps_per_generation % rounds:
            raise GRPOConfigError(f"rounds_per_generation={rounds}: must divide steps_per_generation="
                                  f"{self.steps_per_generation}")
        if self.per_device_batch % self.group_size:
            raise GRPOConfigError(f"per_device_batch={self.per_device_batch}: must be a multiple of group_size")
        if not (0 < self.learning_rate < 1):
            raise GRPOConfigError(f"learning_rate={self.learning_rate}: must be in (0, 1)")


@dataclass
class GRPOResult:
    """What a run produced: the adapter (or model) directory, per-step metrics, LoRA movement.

    After a clean stop ``stopped_reason`` says why and ``adapter_path`` is the checkpoint of
    ``global_step``, the one a restart resumes from.
    """

    adapter_path: Path
    steps: list[dict[str, Any]] = field(default_factory=list)
    lora_delta_norm: float = 0.0
    resumed_from: Path | None = None
    global_step: int = 0
    stopped_reason: str | None = None
    final_lora: dict[str, torch.Tensor] = field(default_factory=dict)  # this process's LoRA tensors at the end
    overlap: list[OverlapRecord] = field(default_factory=list)  # per generation batch: round time, time TRL waited


class _StepMetrics(TrainerCallback):
    """Collects TRL's per-step log (reward, reward_std, kl, extras) and forwards it."""

    def __init__(self, sink: list[dict[str, Any]], step_logger: StepLogger | None) -> None:
        self.sink, self.step_logger = sink, step_logger

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if not logs or "train_runtime" in logs:  # the end-of-training summary is not a step
            return
        record = {"step": state.global_step, **logs}
        self.sink.append(record)
        if self.step_logger is not None:
            self.step_logger(record)


class _StopAtStepBoundary(TrainerCallback):
    """Ends training after the step in flight when ``stop()`` gives a reason, saving a checkpoint first."""

    def __init__(self, stop: StopCheck) -> None:
        self.stop = stop
        self.reason: str | None = None

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        reason = self.stop()
        if reason is not None and state.global_step < state.max_steps:  # at max_steps it is simply done
            self.reason = reason
            control.should_save = True  # the Trainer saves right after on_step_end, then leaves its loop
            control.should_training_stop = True


def _checked(reward_fn: RewardFn) -> Callable[..., list[float | None]]:
    """Wrap the caller's reward function so a wrong shape or a NaN fails loudly, by name."""

    def mor_reward(prompts: list[Any], completions: list[Any], **columns: Any) -> list[float | None]:
        scores = list(reward_fn(prompts, completions, **columns))
        if len(scores) != len(completions):
            raise RewardError(f"reward_fn returned {len(scores)} scores for {len(completions)} completions")
        for i, score in enumerate(scores):
            if score is not None and (not isinstance(score, int | float) or not math.isfinite(score)):
                raise RewardError(f"reward_fn score #{i} is {score!r}: expected a finite float or None")
        return [None if s is None else float(s) for s in scores]

    return mor_reward


def _dataset(prompts: Sequence[Prompt]) -> Any:
    from datasets import Dataset

    return Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": p.question}] for p in prompts],
            "image": [p.image for p in prompts],
            "prompt_id": [p.prompt_id for p in prompts],
        }
    )


def _lora_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().float().cpu().clone() for n, p in model.named_parameters() if "lora_" in n}


def run_grpo(
    *,
    model_path: Path,
    prompts: Sequence[Prompt],
    reward_fn: RewardFn,
    config: GRPORunConfig,
    resume: bool = True,
    step_logger: StepLogger | None = None,
    stop: StopCheck = lambda: None,
    rounds_when: Callable[[int], int] | None = None,
) -> GRPOResult:
    """Train the policy at ``model_path`` with GRPO for ``config.max_steps`` (total, across resumes).

    ``stop`` is asked after every step; a reason ends the run there (see the module docstring).
    With scoring overlapped, ``rounds_when(step)`` says in how many rounds the batch generated at
    ``step`` is scored (0: not overlapped); default ``config.rounds_per_generation`` for every
    batch. The bench varies it to time the variants in one run.
    """
    from peft import LoraConfig
    from trl import GRPOConfig, GRPOTrainer

    if not prompts:
        raise GRPOConfigError("prompts: at least one prompt is required")
    wanted = config.lora_targets if config.lora_targets is None or isinstance(config.lora_targets, str) \
        else list(config.lora_targets)
    plan = check_trainable(Path(model_path), dtype=config.dtype, device=config.device, use_lora=config.use_lora,
                           attn_implementation=config.attn_implementation, lora_targets=wanted)
    on_gpu = plan.device == "cuda"
    init_kwargs: dict[str, Any] = {"dtype": config.dtype}
    if config.attn_implementation is not None:
        init_kwargs["attn_implementation"] = config.attn_implementation
    args = GRPOConfig(
        output_dir=str(config.output_dir),
        num_generations=config.group_size,
        per_device_train_batch_size=config.per_device_batch,
        learning_rate=config.learning_rate,
        lr_scheduler_type="constant",  # a decaying schedule restored from a checkpoint would be 0 past the old end
        max_steps=config.max_steps,
        beta=config.beta,
        max_completion_length=config.max_completion_length,
        temperature=config.temperature,
        seed=config.seed,
        save_strategy="steps",
        save_steps=config.save_steps,
        logging_steps=1,
        use_cpu=not on_gpu,
        bf16=config.dtype == "bfloat16",
        fp16=config.dtype == "float16",
        model_init_kwargs=init_kwargs,
        gradient_checkpointing=False,
        report_to=[],
        remove_unused_columns=False,
        dataloader_num_workers=0,
        steps_per_generation=config.steps_per_generation,
    )
    peft_config = None
    if config.use_lora:
        peft_config = LoraConfig(
            r=config.lora_r, lora_alpha=config.lora_alpha, target_modules=plan.lora_targets, lora_dropout=0.0
        )
    torch.manual_seed(config.seed)  # LoRA init is then the same on every (re)start: the delta is vs. the true start
    steps: list[dict[str, Any]] = []
    stopper = _StopAtStepBoundary(stop)
    checked = _checked(reward_fn)
    overlap = on_gpu if config.overlap_scoring == "auto" else config.overlap_scoring
    rounds = config.rounds_per_generation
    pipeline = ScoringPipeline(checked, slices=config.steps_per_generation,
                               slices_for=rounds_when or (lambda _step: rounds)) if overlap else None
    kwargs: dict[str, Any] = dict(
        model=str(model_path), args=args, train_dataset=_dataset(prompts), peft_config=peft_config,
        processing_class=load_processor(Path(model_path)), callbacks=[_StepMetrics(steps, step_logger), stopper])
    if pipeline is None:
        trainer = GRPOTrainer(reward_funcs=[checked], **kwargs)
    else:
        trainer = overlapped_trainer(pipeline, reward_funcs=[pipeline.reward_function()], **kwargs)
    policy: Any = trainer.model
    initial = _lora_weights(policy)
    last = get_last_checkpoint(str(config.output_dir)) if resume and config.output_dir.is_dir() else None
    try:
        trainer.train(resume_from_checkpoint=last)
    finally:
        if pipeline is not None:
            pipeline.close()
    final = _lora_weights(policy)
    delta = math.sqrt(sum(float((final[n] - initial[n]).pow(2).sum()) for n in final))
    step = int(trainer.state.global_step)
    if stopper.reason is not None:
        out = config.output_dir / f"checkpoint-{step}"  # saved by the Trainer when the callback asked
    else:
        out = config.output_dir / "final"
        trainer.save_model(str(out))
    return GRPOResult(adapter_path=out, steps=steps, lora_delta_norm=delta, resumed_from=Path(last) if last else None,
                      global_step=step, stopped_reason=stopper.reason, final_lora=final,
                      overlap=list(pipeline.records) if pipeline is not None else [])
