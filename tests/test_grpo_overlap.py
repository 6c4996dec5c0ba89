"""Scoring overlapped with generation: each completion scored once, its reward its own, rounds truly overlapped."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from corpus.prompts import build_prompts
from corpus.types import Prompt
from server.errors import GRPOConfigError, RewardError
from server.grpo import GRPORunConfig, run_grpo
from server.grpo_overlap import ScoringPipeline
from server.vlm import build_small_vlm


def _rows(n: int) -> list[dict[str, Any]]:
    return [{"prompt": f"q{i // 2}", "prompt_id": f"p{i // 2}"} for i in range(n)]


def _generate(seen: list[list[str]]) -> Any:
    """The shape of TRL's ``_generate``: (prompt_ids, completion_ids, tool_mask, completions, logprobs, extra,
    images, tool_images), one decoded text per prompt."""

    def generate(prompts: list[Any]) -> tuple[Any, ...]:
        texts = [f"answer to {p} #{len(seen)}.{j}" for j, p in enumerate(prompts)]
        seen.append(texts)
        return ([[1]] * len(prompts), [[2]] * len(prompts), None, texts, None, {}, None, [])

    return generate


def _scorer(calls: list[tuple[int, list[str]]]) -> Any:
    def reward(prompts: list[Any], completions: list[str], trainer_state: Any, log_metric: Any, **_: Any
               ) -> list[float | None]:
        calls.append((trainer_state.global_step, list(completions)))
        log_metric("agents_answered", 3.0)
        return [float(len(c)) for c in completions]

    return reward


def test_each_slice_is_scored_once_and_rewards_stay_with_their_completions() -> None:
    calls: list[tuple[int, list[str]]] = []
    generated: list[list[str]] = []
    pipeline = ScoringPipeline(_scorer(calls), slices=2)
    rows = _rows(8)
    pipeline.begin(rows, step=6, sliceable=True)
    out = pipeline.generate(_generate(generated), [r["prompt"] for r in rows])
    metrics: list[tuple[str, float]] = []
    scores = pipeline.reward_function()([r["prompt"] for r in rows], out[3], prompt_id=[r["prompt_id"] for r in rows],
                                        log_metric=lambda n, v: metrics.append((n, v)))
    pipeline.close()
    assert len(generated) == 2 and out[3] == generated[0] + generated[1]  # two slices of 4, in order
    assert sorted(step for step, _ in calls) == [6, 7]  # slice k of the batch generated at step s is round s + k
    assert sorted(c for _, texts in calls for c in texts) == sorted(out[3])  # every completion once, none twice
    assert scores == [float(len(c)) for c in out[3]]  # each reward is its own completion's
    assert metrics == [("agents_answered", 3.0)] * 2  # the rounds' metrics reach TRL's log_metric
    assert [(r.step, r.slices, r.overlapped) for r in pipeline.records] == [(6, 2, True)]


def test_a_round_runs_while_the_next_slice_is_generated() -> None:
    first_round_running = threading.Event()
    seen: list[list[str]] = []
    plain = _generate(seen)

    def generate(prompts: list[Any]) -> tuple[Any, ...]:
        if seen:  # the second slice is only generated once the first slice's round has started
            assert first_round_running.wait(10.0)
        return plain(prompts)

    def reward(completions: list[str], **_: Any) -> list[float | None]:
        first_round_running.set()
        time.sleep(0.2)
        return [1.0] * len(completions)

    pipeline = ScoringPipeline(reward, slices=2)
    rows = _rows(4)
    pipeline.begin(rows, step=0, sliceable=True)
    out = pipeline.generate(generate, [r["prompt"] for r in rows])
    assert pipeline.reward_function()([], out[3], prompt_id=[r["prompt_id"] for r in rows]) == [1.0] * 4
    pipeline.close()


def test_rewards_for_other_completions_or_prompts_are_refused() -> None:
    pipeline = ScoringPipeline(_scorer([]), slices=1)
    rows = _rows(4)
    reward = pipeline.reward_function()
    for completions_of_another_batch, prompt_ids in ((True, [r["prompt_id"] for r in rows]),
                                                     (False, ["p9"] * 4)):
        pipeline.begin(rows, step=0, sliceable=True)
        out = pipeline.generate(_generate([]), [r["prompt"] for r in rows])
        completions = list(out[3]) if completions_of_another_batch else out[3]
        with pytest.raises(RewardError, match="other than those|differs"):
            reward([], completions, prompt_id=prompt_ids)
    pipeline.close()


def test_a_batch_not_overlapped_is_scored_by_the_plain_call_once() -> None:
    calls: list[tuple[int, list[str]]] = []
    pipeline = ScoringPipeline(_scorer(calls), slices=2, slices_for=lambda step: 0 if step == 4 else 2)
    rows = _rows(4)
    pipeline.begin(rows, step=4, sliceable=True)
    out = pipeline.generate(_generate([]), [r["prompt"] for r in rows])

    class State:
        global_step = 4

    scores = pipeline.reward_function()([], out[3], trainer_state=State(), log_metric=lambda *_: None,
                                        prompt_id=[r["prompt_id"] for r in rows])
    pipeline.close()
    assert calls == [(4, out[3])] and scores == [float(len(c)) for c in out[3]]
    assert [(r.step, r.overlapped) for r in pipeline.records] == [(4, False)]


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_small_vlm(tmp_path_factory.mktemp("overlap") / "policy", seed=0)


@pytest.mark.slow
def test_trl_run_scores_every_step_slice_on_a_worker_while_generating(policy_dir: Path, tmp_path: Path) -> None:
    prompts: list[Prompt] = build_prompts(8, seed=0)
    calls: list[tuple[int, str, int]] = []
    lock = threading.Lock()

    def slow_reward(prompts: list[Any], completions: list[Any], prompt_id: list[str], trainer_state: Any,
                    **_: Any) -> list[float]:
        time.sleep(0.5)  # a round: waiting on members
        with lock:
            calls.append((trainer_state.global_step, threading.current_thread().name, len(completions)))
        return [len(c[0]["content"]) / 10 for c in completions]

    config = GRPORunConfig(output_dir=tmp_path / "run", max_steps=4, learning_rate=1e-2, max_completion_length=8,
                           save_steps=100, steps_per_generation=2, overlap_scoring=True,
                           rounds_per_generation=2)
    result = run_grpo(model_path=policy_dir, prompts=prompts, reward_fn=slow_reward, config=config, resume=False)
    assert [s["step"] for s in result.steps] == [1, 2, 3, 4]
    assert sorted(step for step, _, _ in calls) == [0, 1, 2, 3]  # one round per step's slice, keyed by that step
    assert all(name.startswith("mor-round") and n == config.per_device_batch for _, name, n in calls)
    assert [(r.step, r.slices, r.overlapped) for r in result.overlap] == [(0, 2, True), (2, 2, True)]
    for record in result.overlap:  # two 0.5 s rounds, the first behind the second slice's generation
        assert record.round_s >= 1.0 and record.exposed_s < record.round_s - 0.4


def test_one_round_per_batch_scores_the_whole_batch_under_its_first_step() -> None:
    calls: list[tuple[int, list[str]]] = []
    generated: list[list[str]] = []
    pipeline = ScoringPipeline(_scorer(calls), slices=4, slices_for=lambda _step: 1)
    rows = _rows(8)
    pipeline.begin(rows, step=8, sliceable=True)
    out = pipeline.generate(_generate(generated), [r["prompt"] for r in rows])
    scores = pipeline.reward_function()([], out[3], prompt_id=[r["prompt_id"] for r in rows],
                                        log_metric=lambda *_: None)
    pipeline.close()
    assert len(generated) == 1 and calls == [(8, out[3])]  # generated in one go, one round keyed by the batch's step
    assert scores == [float(len(c)) for c in out[3]]


def test_rounds_per_generation_must_divide_steps_per_generation(tmp_path: Path) -> None:
    with pytest.raises(GRPOConfigError, match="rounds_per_generation"):
        GRPORunConfig(output_dir=tmp_path, steps_per_generation=4, rounds_per_generation=3)
    config = GRPORunConfig(output_dir=tmp_path, steps_per_generation=4, rounds_per_generation=2)
    assert config.rounds_per_generation == 2
