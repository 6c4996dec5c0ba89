"""The policy side: one shared reference, GRPO against a scorer, greedy answers for evaluation.

Why a *style-neutral* warm start here (unlike ``mor demo``, which warm-starts on each domain
owner's favourite answer): if the reference already answered in every client's preferred
form there would be nothing left for alignment to do, and every method would tie. The
reference learns, per prompt, one *correct* candidate answer in a uniformly random form
(terse, sentence, clinical, lay, hedged, exact, rounded...), so it is fluent and often right
but has no house style; each method's GRPO run must then find out what the clients prefer.
"""

from __future__ import annotations

import hashlib
import random
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from corpus.candidates import candidate_answers
from corpus.prompts import build_prompts
from corpus.types import Prompt
from server.federated_reward import completion_text
from server.grpo import GRPOResult, GRPORunConfig, run_grpo
from server.vlm import WarmStartConfig, build_small_vlm, generate_answers, load_vlm, warm_start
from sim.errors import EvalConfigError
from sim.eval.scoring import Mixture, Scorer


def neutral_sft_examples(n: int, *, seed: int = 0) -> list[tuple[Prompt, str]]:
    """``n`` (train prompt, correct answer in a random form) pairs: fluent, no preferred style."""
    rng = random.Random(f"eval-neutral-sft:{seed}")
    out = []
    for prompt in build_prompts(n, split="train", seed=seed + 31337):
        correct = [c for c in candidate_answers(prompt, rng) if c.correct]
        out.append((prompt, rng.choice(correct).text))
    return out


def prepare_reference(work_dir: Path, *, n_sft: int, steps: int, progress: bool = True,
                      model_path: Path | None = None) -> Path:
    """Warm-start the base VLM (cached under ``work_dir``); the reference's path.

    The base is ``model_path`` (e.g. the pretrained VLM of ``mor model build``) or, without it,
    the offline toy VLM built here. Each base gets its own warm-start folder. A pretrained base
    keeps its language model frozen and learns the neutral answers through the vision tower,
    the connector and a LoRA on the language model (merged), at a lower learning rate: full
    fine-tuning at the toy's rate would overwrite what pretraining gave it.
    """
    if model_path is None:
        base, warm = work_dir / "base", work_dir / "warm"
        if not (base / "config.json").is_file():
            shutil.rmtree(base, ignore_errors=True)
            build_small_vlm(base, seed=0)
    else:
        base = Path(model_path).resolve()
        if not (base / "config.json").is_file():
            raise EvalConfigError(f"--model {model_path}: no config.json there; give a checkpoint folder "
                                  "(e.g. the output of `mor model build`)")
        warm = work_dir / f"warm-{hashlib.sha256(str(base).encode()).hexdigest()[:12]}"
    config = WarmStartConfig(steps=steps, warmup_steps=max(1, steps // 15))
    if model_path is not None:
        config = WarmStartConfig(steps=steps, warmup_steps=max(1, steps // 15), train="vision", lora_r=8,
                                 learning_rate=1e-3)
    return warm_start(base, neutral_sft_examples(n_sft), out_dir=warm, config=config, show_progress=progress).path


class ScorerReward:
    """TRL reward callable over a scorer; records the router weights a mixture used, per prompt."""

    __name__ = "eval_reward"

    def __init__(self, scorer: Scorer, prompts: Sequence[Prompt]) -> None:
        self.scorer = scorer
        self.prompts = {p.prompt_id: p for p in prompts}
        self.used_weights: list[tuple[str, list[float]]] = []  # (domain, weights) per scored prompt

    def __call__(self, prompts: list[Any], completions: list[Any], completion_ids: Any = None, *,
                 prompt_id: Sequence[str], **_columns: Any) -> list[float]:
        batch = [self.prompts[pid] for pid in prompt_id]
        scores = self.scorer.score(batch, [completion_text(c) for c in completions])
        if isinstance(self.scorer, Mixture):
            distinct = list({p.prompt_id: p for p in batch}.values())
            for prompt, row in zip(distinct, self.scorer.weights(distinct).tolist(), strict=True):
                self.used_weights.append((prompt.domain, row))
        return [float(s) for s in scores]


def align(reference: Path, prompts: Sequence[Prompt], reward: ScorerReward, *, out_dir: Path, steps: int,
          group_size: int, per_device_batch: int, learning_rate: float, beta: float, max_completion_length: int,
          seed: int) -> GRPOResult:
    """GRPO (LoRA, KL to the reference) for exactly ``steps`` steps; one checkpoint, no resume."""
    shutil.rmtree(out_dir, ignore_errors=True)
    config = GRPORunConfig(output_dir=out_dir, group_size=group_size, per_device_batch=per_device_batch,
                           learning_rate=learning_rate, max_steps=steps, beta=beta, seed=seed,
                           max_completion_length=max_completion_length, save_steps=steps)
    result = run_grpo(model_path=reference, prompts=prompts, reward_fn=reward, config=config, resume=False)
    for checkpoint in out_dir.glob("checkpoint-*"):  # only the adapter in final/ is needed
        shutil.rmtree(checkpoint, ignore_errors=True)
    return result


def greedy_answers(reference: Path, prompts: Sequence[Prompt], *, adapter: Path | None = None,
                   max_new_tokens: int = 32) -> list[str]:
    """Greedy answers of the reference, or of the reference + a LoRA adapter (merged)."""
    vlm = load_vlm(reference, device="cpu")
    model: Any = vlm.model
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    with torch.no_grad():
        return generate_answers(model, vlm.processor, prompts, max_new_tokens=max_new_tokens)
