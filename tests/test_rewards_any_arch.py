"""Reward models of any architecture: tiny HF checkpoints (text classifier, LLaVA VLM) built offline with
their real config classes and `save_pretrained`, and a member's entry-point model, each trained under DP
to its budget (one DP sample = one pair, PRV, #820 guard, independent ε), saved, reloaded and scored;
layers Opacus cannot privatise are named before training."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch

from client_agent.dp import PrivacyBudget, train_private
from client_agent.errors import CheckpointError, RewardModelError
from client_agent.rewards.opacus_check import UnsupportedLayerError, privatisation_problems
from client_agent.rewards.registry import build_reward_model, load_reward_model, model_param_problems
from corpus.builders import build_client_pairs
from sim.bench.hf_checkpoints import build_text_checkpoint, build_vlm_checkpoint

BUDGET = PrivacyBudget(epsilon=4.0, delta=1e-3)


@pytest.fixture(scope="module")
def pairs():
    return build_client_pairs("medical", 48, seed=0)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def build_tiny_llama(path: Path) -> Path:
    """A decoder LM checkpoint (LlamaForCausalLM): AutoModelForSequenceClassification adds the score head."""
    return build_text_checkpoint(path, size="tiny")


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory) -> Path:
    return build_vlm_checkpoint(tmp_path_factory.mktemp("tiny-llava"), size="tiny")


PLUGIN = textwrap.dedent('''
    """A member's own reward model: hashed bag of words + mean colour -> linear score."""
    import torch
    from torch import nn

    class BagOfWords(nn.Module):
        def __init__(self, buckets=64, norm="layer"):
            super().__init__()
            self.buckets = buckets
            self.norm = nn.BatchNorm1d(buckets + 3) if norm == "batch" else nn.LayerNorm(buckets + 3)
            self.score = nn.Linear(buckets + 3, 1)

        def featurize_responses(self, images, questions, responses):
            def bag(text):
                v = torch.zeros(self.buckets)
                for w in text.lower().split():
                    v[sum(map(ord, w)) % self.buckets] += 1.0
                return v
            rgb = [list(img.convert("RGB").resize((4, 4)).tobytes()) for img in images]
            colour = torch.tensor(rgb, dtype=torch.float32).reshape(len(images), -1, 3).mean(1) / 255
            words = torch.stack([torch.stack([bag(q + " " + r) for r in group])
                                 for q, group in zip(questions, responses)])
            return colour, words

        def forward(self, colour, words):
            k = words.shape[1]
            x = torch.cat([words, colour.unsqueeze(1).expand(-1, k, -1)], dim=-1)
            return self.score(self.norm(x.reshape(-1, x.shape[-1]))).reshape(-1, k)

    def build(buckets=64, norm="layer"):
        return BagOfWords(buckets, norm)
''')


@pytest.fixture
def plugin(tmp_path, monkeypatch) -> str:
    (tmp_path / "member_rm_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "member_rm_plugin:build"
    sys.modules.pop("member_rm_plugin", None)


def _train(model, pairs):
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.01)
    return train_private(model=model, optimizer=optimizer, train_pairs=pairs, budget=BUDGET, max_budget=BUDGET,
                         epochs=2, batch_size=16, max_grad_norm=1.0, insecure_pilot=True, seed=0, progress=False)


def _train_save_reload(model, pairs, tmp_path: Path, entry_point: str | None = None):
    result = _train(model, pairs)
    assert result.epsilon <= BUDGET.epsilon * 1.01 and result.accountant == "prv"
    assert abs(result.epsilon_independent - result.epsilon) <= 0.01 * result.epsilon
    assert result.dataset_size == len(pairs)  # one DP sample = one pair
    model.save(tmp_path / "rm")
    again = load_reward_model(tmp_path / "rm", entry_point=entry_point)
    assert again.model_digest() == model.model_digest()
    p = pairs[:3]
    args = ([x.prompt.image for x in p], [x.prompt.question for x in p], [x.chosen for x in p])
    scores = again.score(*args)
    assert scores.shape == (3,) and torch.isfinite(scores).all()
    assert torch.allclose(scores, model.score(*args), atol=1e-5)
    return result


def test_hf_text_classifier_trains_under_dp(tiny_llama, pairs, tmp_path):
    model = build_reward_model("hf-text", {"path": str(tiny_llama), "lora_r": 4, "max_len": 48})
    names = model.trainable_parameter_names()
    assert names and all("lora_" in n or ".score." in n for n in names)
    _train_save_reload(model, pairs, tmp_path)


def test_hf_vlm_with_scalar_head_trains_under_dp(tiny_llava, pairs, tmp_path):
    model = build_reward_model("hf-vlm", {"path": str(tiny_llava), "lora_r": 4})
    names = model.trainable_parameter_names()
    assert any("language_model" in n for n in names) and not any("vision_tower" in n for n in names)
    pixels, ids, mask = model.featurize(pairs[:2])
    assert pixels.shape[0] == 2 and ids.shape[:2] == (2, 2)  # pixels per prompt, tokens per answer
    _train_save_reload(model, pairs, tmp_path)


def test_entry_point_trains_and_reload_needs_the_config_to_name_it(plugin, pairs, tmp_path):
    model = build_reward_model(plugin, {"buckets": 32})
    _train_save_reload(model, pairs, tmp_path, entry_point=plugin)
    with pytest.raises(CheckpointError, match="needs entry point 'member_rm_plugin:build'.*refusing to import"):
        load_reward_model(tmp_path / "rm")
    assert model_param_problems(plugin, {"bukets": 3}) == [f"params.bukets: not a parameter of {plugin}"]


def test_batchnorm_is_named_before_training(plugin, pairs):
    model = build_reward_model(plugin, {"norm": "batch"})
    assert "layer 'inner.norm' (BatchNorm1d)" in privatisation_problems(model)[0]
    with pytest.raises(UnsupportedLayerError, match=r"layer 'inner.norm' \(BatchNorm1d\): .*GroupNorm"):
        _train(model, pairs)


def test_bad_entry_points_and_params_are_one_line_errors(tiny_llama):
    with pytest.raises(RewardModelError, match="cannot import 'no_such_member_pkg.rm': No module named"):
        build_reward_model("no_such_member_pkg.rm:build", {})
    assert model_param_problems("hf-text", {}) == ["params.path: required for hf-text (the local Hugging Face "
                                                   "checkpoint folder)"]
    assert model_param_problems("hf-text", {"path": "x", "lora": 3})[0].startswith("params.lora: not a parameter")
    assert model_param_problems("gpt-judge", {})[0].startswith("arch: unknown architecture 'gpt-judge'")
    with pytest.raises(CheckpointError, match="cannot load a Hugging Face"):
        build_reward_model("hf-text", {"path": str(tiny_llama / "nope")})
