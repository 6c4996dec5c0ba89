"""GRPO glue on TRL: refuses unsafe settings, trains LoRA with a KL penalty, resumes after a crash."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest

from corpus.prompts import build_prompts
from corpus.types import Prompt
from server.errors import GRPOConfigError, RewardError
from server.grpo import GRPORunConfig, run_grpo
from server.vlm import build_small_vlm

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_small_vlm(tmp_path_factory.mktemp("grpo") / "policy", seed=0)


@pytest.fixture(scope="module")
def prompts() -> list[Prompt]:
    return build_prompts(8, seed=0)


def length_reward(prompts: list[Any], completions: list[Any], prompt_id: list[str], **columns: Any) -> list[float]:
    """Longer answers score higher; reports an extra metric the way a federated round would."""
    assert len(prompt_id) == len(completions) and "image" in columns
    scores = [len(c[0]["content"]) / 10 for c in completions]
    columns["log_metric"]("clients_answered", 3.0)
    return scores


def _config(tmp_path: Path, **overrides: Any) -> GRPORunConfig:
    base = GRPORunConfig(
        output_dir=tmp_path / "run", max_steps=2, learning_rate=1e-2, max_completion_length=8, save_steps=1
    )
    return dataclasses.replace(base, **overrides)


@pytest.mark.parametrize("beta", [0.0, -0.1, float("nan")])
def test_beta_without_kl_is_refused(tmp_path: Path, beta: float) -> None:
    with pytest.raises(GRPOConfigError, match="beta"):
        _config(tmp_path, beta=beta)


def test_other_bad_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(GRPOConfigError, match="group_size"):
        _config(tmp_path, group_size=1, per_device_batch=1)
    with pytest.raises(GRPOConfigError, match="multiple of group_size"):
        _config(tmp_path, group_size=4, per_device_batch=6)


def test_grpo_moves_lora_weights_and_logs_finite_kl(policy_dir: Path, prompts: list[Prompt], tmp_path: Path) -> None:
    logged: list[dict[str, Any]] = []
    result = run_grpo(
        model_path=policy_dir,
        prompts=prompts,
        reward_fn=length_reward,
        config=_config(tmp_path),
        step_logger=logged.append,
    )
    assert [s["step"] for s in result.steps] == [1, 2] and logged == result.steps
    for step in result.steps:
        assert math.isfinite(step["kl"]) and step["kl"] >= 0
        assert math.isfinite(step["reward"]) and math.isfinite(step["reward_std"])
        assert step["clients_answered"] == 3.0
    assert result.steps[-1]["kl"] > 0  # the policy left the reference after the first update
    assert result.lora_delta_norm > 1e-4 and math.isfinite(result.lora_delta_norm)
    assert (result.adapter_path / "adapter_config.json").is_file()
    assert result.resumed_from is None


def test_resume_continues_from_checkpoint(policy_dir: Path, prompts: list[Prompt], tmp_path: Path) -> None:
    first = run_grpo(model_path=policy_dir, prompts=prompts, reward_fn=length_reward, config=_config(tmp_path))
    assert (tmp_path / "run" / "checkpoint-2").is_dir()
    # "crash": a new process would construct everything again; only output_dir survives.
    second = run_grpo(
        model_path=policy_dir, prompts=prompts, reward_fn=length_reward, config=_config(tmp_path, max_steps=4)
    )
    assert second.resumed_from == tmp_path / "run" / "checkpoint-2"
    assert [s["step"] for s in second.steps] == [3, 4]
    assert all(s["learning_rate"] > 0 for s in second.steps)
    assert second.lora_delta_norm > first.lora_delta_norm * 0.5


def test_fresh_start_when_resume_disabled(policy_dir: Path, prompts: list[Prompt], tmp_path: Path) -> None:
    run_grpo(model_path=policy_dir, prompts=prompts, reward_fn=length_reward, config=_config(tmp_path, max_steps=1))
    again = run_grpo(
        model_path=policy_dir,
        prompts=prompts,
        reward_fn=length_reward,
        config=_config(tmp_path, max_steps=1),
        resume=False,
    )
    assert again.resumed_from is None and [s["step"] for s in again.steps] == [1]


def test_reward_of_wrong_shape_fails_loudly(policy_dir: Path, prompts: list[Prompt], tmp_path: Path) -> None:
    def too_few(prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
        return [1.0]

    with pytest.raises(RewardError, match="1 scores for"):
        run_grpo(model_path=policy_dir, prompts=prompts, reward_fn=too_few, config=_config(tmp_path, max_steps=1))

    def nan_score(prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
        return [float("nan")] * len(completions)

    with pytest.raises(RewardError, match="finite"):
        run_grpo(model_path=policy_dir, prompts=prompts, reward_fn=nan_score, config=_config(tmp_path, max_steps=1))
