"""Four real VLM families, tiny and random, aligned through calibration -> router fit -> GRPO with KL.

Each checkpoint is an instance of the family's own config class, saved with ``save_pretrained`` and
reloaded from its folder by the stock Auto classes, then trained by the server's real run
(:func:`server.trainer.run_training`: measured calibration, learned router fit, fused federated
reward under CKKS) with in-process agents — the same setup as ``test_rounds_training``. Every
family gets a different ``training.toml`` knob (dtype, attention, LoRA targets). Settings or
families that cannot work must fail in :func:`check_trainable`, before anything is paid for.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from test_rounds_coordinator import AGENTS, features
from test_rounds_training import setup  # noqa: F401  (the in-process consortium fixture, used by name)
from transformers import AutoModelForImageTextToText, AutoProcessor, LlamaConfig, LlamaForCausalLM

from corpus.prompts import build_prompts
from server.errors import VLMLoadError
from server.grpo import GRPORunConfig, run_grpo
from server.trainer import TrainingSection, run_training
from server.vlm import SmallVLMSpec, build_small_vlm, build_tiny_qwen2_vl, load_processor, packaged_texts
from server.vlm.families import check_trainable
from server.vlm.tiny import build_tiny_idefics3, build_tiny_qwen2_5_vl

pytestmark = pytest.mark.slow

_TINY_LLAVA = SmallVLMSpec(vocab_size=1024, text_hidden=64, text_layers=2, vision_hidden=32, vision_layers=1,
                           patch_size=16)
BUILDERS: dict[str, Callable[[Path, list[str]], Path]] = {
    "llava": lambda d, texts: build_small_vlm(d, texts=texts, spec=_TINY_LLAVA),
    "qwen2_vl": lambda d, texts: build_tiny_qwen2_vl(d, texts=texts),
    "qwen2_5_vl": lambda d, texts: build_tiny_qwen2_5_vl(d, texts=texts),
    "idefics3": lambda d, texts: build_tiny_idefics3(d, texts=texts),
}
MODEL_CLASS = {"llava": "LlavaForConditionalGeneration", "qwen2_vl": "Qwen2VLForConditionalGeneration",
               "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration", "idefics3": "Idefics3ForConditionalGeneration"}
LANGUAGE_PART = {"llava": "language_model", "qwen2_vl": "language_model", "qwen2_5_vl": "language_model",
                 "idefics3": "text_model"}
# One training.toml knob per family, so each is exercised on a real run.
KNOBS: dict[str, dict[str, Any]] = {
    "llava": {"attn_implementation": "sdpa"},
    "qwen2_vl": {"attn_implementation": "eager"},
    "qwen2_5_vl": {"dtype": "bfloat16"},
    "idefics3": {"lora_target_modules": ("q_proj", "v_proj")},
}


@pytest.fixture(scope="session")
def family_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root, texts = tmp_path_factory.mktemp("families"), packaged_texts()[:4000]
    return {name: build(root / name, texts) for name, build in BUILDERS.items()}


def test_each_family_reloads_through_the_stock_auto_classes(family_dirs: dict[str, Path]) -> None:
    for family, path in family_dirs.items():
        model = AutoModelForImageTextToText.from_pretrained(path)
        assert type(model).__name__ == MODEL_CLASS[family]
        processor = load_processor(path)
        if family.startswith("qwen"):  # no torchvision: AutoProcessor finds only the tokenizer, load_processor fixes it
            assert not hasattr(AutoProcessor.from_pretrained(path), "image_processor")
        else:
            assert type(AutoProcessor.from_pretrained(path)) is type(processor)
        assert hasattr(processor, "image_processor") and processor.tokenizer.padding_side == "left"


def test_default_lora_targets_are_the_language_models_attention(family_dirs: dict[str, Path]) -> None:
    for family, path in family_dirs.items():
        plan = check_trainable(path, device="cpu")
        assert plan.model_type == family and plan.device == "cpu"
        assert plan.lora_modules == 2 * 4, family  # 2 text layers x q/k/v/o, nothing of the vision tower
        assert isinstance(plan.lora_targets, str) and LANGUAGE_PART[family] in plan.lora_targets


@pytest.mark.parametrize("family", list(BUILDERS))
def test_family_aligns_on_the_federated_reward(family: str, family_dirs: dict[str, Path], setup: Any,  # noqa: F811
                                               tmp_path: Path) -> None:
    world, services = setup
    for agent in AGENTS:
        world.run_agent(agent)
    config = TrainingSection(
        model_path=family_dirs[family], output_dir=tmp_path / "out", quorum=3, deadline_s=20, enrol_timeout_s=5,
        n_calibration=8, n_public_pairs=8, n_prompts=2, group_size=2, per_device_batch=2, max_steps=2,
        max_completion_length=4, learning_rate=1e-2, device="cpu", router="learned", **KNOBS[family],
    )
    report = run_training(services, config, features=features, show_progress=False)

    assert report.router_fit is not None and sorted(report.agents) == sorted(AGENTS)
    actions = world.audit.actions()
    assert actions.index("agent.calibration.measured") < actions.index("router.updated") < actions.index("grpo.step")
    steps = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    rounds = [json.loads(line) for line in (tmp_path / "out" / "rounds.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2] and len(rounds) == 2
    for step, rnd in zip(steps, rounds, strict=True):
        assert math.isfinite(step["kl"]) and step["kl"] >= 0 and step["agents_answered"] == 3
        assert step["reward"] == pytest.approx(rnd["reward_mean"], abs=1e-4)  # trained on the fused reward
    assert steps[-1]["kl"] > 0  # beta > 0: the policy is measured against the frozen reference
    assert report.grpo is not None and report.grpo.lora_delta_norm > 0
    adapter = json.loads((report.grpo.adapter_path / "adapter_config.json").read_text())
    targets = adapter["target_modules"]
    if "lora_target_modules" in KNOBS[family]:
        assert sorted(targets) == sorted(KNOBS[family]["lora_target_modules"])
    else:
        assert LANGUAGE_PART[family] in targets


def _text_only_checkpoint(path: Path) -> Path:
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)
    LlamaForCausalLM(config).save_pretrained(path)
    return path


@pytest.mark.parametrize(("settings", "message"), [
    ({"dtype": "float16", "device": "cpu"}, "float16.* needs a CUDA device"),
    ({"dtype": "float64"}, "dtype = 'float64'"),
    ({"device": "tpu"}, "expected 'auto', 'cpu' or 'cuda'"),
    ({"lora_targets": r".*\.nothing_here"}, "match no linear layer"),
    ({"attn_implementation": "flash_attention_2"}, "cannot be built with attn_implementation"),
])
def test_unusable_settings_are_refused_at_load_time(family_dirs: dict[str, Path], settings: dict[str, Any],
                                                    message: str) -> None:
    with pytest.raises(VLMLoadError, match=message):
        check_trainable(family_dirs["idefics3"], **settings)


def test_a_family_that_cannot_work_fails_before_training(tmp_path: Path) -> None:
    calls: list[int] = []

    def reward(prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
        calls.append(len(completions))  # a federated round would be paid for here
        return [0.0] * len(completions)

    path = _text_only_checkpoint(tmp_path / "text-only")
    with pytest.raises(VLMLoadError, match="model_type 'llama' cannot be built as an image-text model"):
        run_grpo(model_path=path, prompts=build_prompts(2, seed=0), reward_fn=reward,
                 config=GRPORunConfig(output_dir=tmp_path / "run", group_size=2, per_device_batch=2, max_steps=1))
    assert calls == [] and not (tmp_path / "run").exists()
    assert torch.is_grad_enabled()
