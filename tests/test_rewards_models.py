"""Reward models: one interface over three architectures; save/load/digest; local HF checkpoints;
per-sample gradients under Opacus equal a batch-of-one loop (one DP sample = one pair)."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from opacus import GradSampleModule

from client_agent.errors import CheckpointError
from client_agent.rewards import (
    ARCHITECTURES,
    BradleyTerryLoss,
    FrozenMLPReward,
    LoraMiniLMReward,
    RewardModel,
    TinyVLTReward,
    load_reward_model,
)
from corpus.builders import build_client_pairs
from embed.encoders import default_text_model_path


@pytest.fixture(scope="module")
def pairs():
    return build_client_pairs("medical", 6, seed=3)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    """A tiny BERT checkpoint saved locally (random weights, MiniLM's WordPiece tokenizer)."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    path = tmp_path_factory.mktemp("tiny-bert")
    tok = AutoTokenizer.from_pretrained(str(default_text_model_path()), local_files_only=True)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    BertModel(cfg).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


def _models(tiny_bert: Path) -> list[RewardModel]:
    return [FrozenMLPReward(hidden=16), TinyVLTReward(dim=16, heads=2, max_text=32),
            LoraMiniLMReward.from_pretrained(tiny_bert, max_len=32, lora_r=4)]


def test_three_architectures_are_registered():
    assert set(ARCHITECTURES) == {"frozen-mlp", "tiny-vlt", "lora-minilm"}


def test_each_architecture_featurizes_pairs_and_scores(pairs, tiny_bert):
    for model in _models(tiny_bert):
        tensors = model.featurize(pairs)
        assert all(t.shape[0] == len(pairs) for t in tensors), model.arch
        assert any(t.dim() >= 2 and t.shape[1] == 2 for t in tensors), model.arch  # the (chosen, rejected) axis
        out = model(*tensors)
        assert out.shape == (len(pairs), 2), model.arch
        scores = model.score([p.prompt.image for p in pairs], [p.prompt.question for p in pairs],
                             [p.chosen for p in pairs])
        assert scores.shape == (len(pairs),) and torch.isfinite(scores).all(), model.arch
        # scoring a response alone gives the same number as scoring it inside a pair
        torch.testing.assert_close(scores, out[:, 0].detach(), atol=1e-5, rtol=1e-5)


def test_save_load_round_trip_keeps_digest_and_scores(pairs, tiny_bert, tmp_path):
    for model in _models(tiny_bert):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01)  # not the init: prove trained weights travel
        before = model.score([p.prompt.image for p in pairs], [p.prompt.question for p in pairs],
                             [p.rejected for p in pairs])
        model.save(tmp_path / model.arch)
        loaded = load_reward_model(tmp_path / model.arch)
        assert type(loaded) is type(model) and loaded.model_digest() == model.model_digest()
        after = loaded.score([p.prompt.image for p in pairs], [p.prompt.question for p in pairs],
                             [p.rejected for p in pairs])
        torch.testing.assert_close(before, after)


def test_digest_changes_with_any_weight(tiny_bert):
    model = TinyVLTReward(dim=16, heads=2, max_text=32)
    d0 = model.model_digest()
    assert len(d0) == 64 and d0 == TinyVLTReward(dim=16, heads=2, max_text=32).model_digest()
    with torch.no_grad():
        model.head.bias.add_(1e-6)
    assert model.model_digest() != d0


def test_tampered_or_bad_checkpoints_are_refused_with_the_path(tmp_path):
    model = TinyVLTReward(dim=16, heads=2, max_text=32)
    good = model.save(tmp_path / "good")
    bad = tmp_path / "tampered"
    shutil.copytree(good, bad)
    manifest = json.loads((bad / "reward_model.json").read_text())
    manifest["digest"] = "0" * 64
    (bad / "reward_model.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="digest"):
        load_reward_model(bad)
    manifest["arch"] = "gpt-17"
    (bad / "reward_model.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="unknown arch 'gpt-17'"):
        load_reward_model(bad)
    with pytest.raises(CheckpointError, match="reward_model.json: not found"):
        load_reward_model(tmp_path / "nowhere")
    (bad / "reward_model.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable manifest"):
        load_reward_model(bad)


def test_transformers_parts_load_a_local_hf_checkpoint(tiny_bert, pairs):
    lora = LoraMiniLMReward.from_pretrained(tiny_bert, max_len=32)
    base: Any = lora.encoder.get_base_model()
    assert base.config.hidden_size == 32
    assert any("lora_A" in n for n, _ in lora.named_parameters())
    frozen = FrozenMLPReward.from_pretrained(tiny_bert, hidden=8)
    assert frozen.fc1.in_features == 1280 + 3 * 32
    assert frozen.score([pairs[0].prompt.image], [pairs[0].prompt.question], ["yes"]).shape == (1,)
    with pytest.raises(CheckpointError, match="cannot load"):
        LoraMiniLMReward.from_pretrained(tiny_bert / "missing")


def test_bradley_terry_loss_matches_its_formula():
    s = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    expected = -torch.nn.functional.logsigmoid(torch.tensor([2.0, -1.0]))
    torch.testing.assert_close(BradleyTerryLoss(reduction="none")(s), expected)
    torch.testing.assert_close(BradleyTerryLoss()(s), expected.mean())


@pytest.mark.parametrize("arch", ["frozen-mlp", "tiny-vlt", "lora-minilm"])
def test_per_sample_gradients_equal_a_batch_of_one_loop(arch, pairs, tiny_bert):
    """Opacus' per-pair gradients (hooks mode, as train_private uses) vs. one pair at a time."""
    model = {m.arch: m for m in _models(tiny_bert)}[arch].train()  # Opacus hooks need train mode; no dropout here
    tensors = model.featurize(pairs)
    reference = copy.deepcopy(model)
    gsm = GradSampleModule(model, loss_reduction="sum")
    BradleyTerryLoss(reduction="sum")(gsm(*tensors)).backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    ref_params = dict(reference.named_parameters())
    assert trainable
    for i in range(len(pairs)):
        reference.zero_grad()
        BradleyTerryLoss(reduction="sum")(reference(*(t[i : i + 1] for t in tensors))).backward()
        for name, p in trainable:
            expected = ref_params[name].grad
            assert expected is not None, name
            torch.testing.assert_close(getattr(p, "grad_sample")[i],  # noqa: B009 - set by Opacus
                                       expected, atol=1e-5, rtol=1e-4, msg=f"{arch} {name} pair {i}")
    gsm.to_standard_module()


def test_ghost_clipping_clips_each_pair_not_each_answer():
    """Ghost clipping (used for the head-only model) == per-pair clip of the batch-of-one gradients."""
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    gen = torch.Generator().manual_seed(0)
    b, clip = 8, 0.05
    tensors = (torch.randn(b, 1280, generator=gen), torch.randn(b, 384, generator=gen),
               torch.randn(b, 2, 384, generator=gen))
    model = FrozenMLPReward(hidden=16)
    reference = copy.deepcopy(model)
    expected = {n: torch.zeros_like(p) for n, p in reference.named_parameters()}
    for i in range(b):
        reference.zero_grad()
        BradleyTerryLoss()(reference(*(t[i : i + 1] for t in tensors))).backward()
        grads = {n: p.grad.clone() for n, p in reference.named_parameters() if p.grad is not None}
        norm = torch.sqrt(torch.stack([(g**2).sum() for g in grads.values()]).sum())
        assert norm > clip  # clipping is active, so a per-answer clip would give a different result
        for n, g in grads.items():
            expected[n] += g * min(1.0, clip / float(norm)) / b
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.warns(UserWarning, match="Secure RNG turned off"):  # a test, not a deployment
        engine = PrivacyEngine(accountant="prv")
    loader = DataLoader(TensorDataset(*tensors), batch_size=b)
    gsm, opt, crit, _ = engine.make_private(
        module=model, optimizer=torch.optim.SGD(model.parameters(), lr=1.0), criterion=BradleyTerryLoss(),
        data_loader=loader, noise_multiplier=0.0, max_grad_norm=clip, poisson_sampling=False,
        grad_sample_mode="ghost")
    opt.zero_grad()
    crit(gsm(*tensors)).backward()
    opt.step()
    for n, p in model.named_parameters():
        torch.testing.assert_close(before[n] - p.detach(), expected[n], atol=1e-6, rtol=1e-4, msg=n)
