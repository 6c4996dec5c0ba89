"""DP training: every architecture learns under a real (ε, δ) budget; refusals; #820 guard; ε recomputed."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from client_agent.dp import InsecurePilotWarning, PrivacyBudget, recompute_epsilon, train_private
from client_agent.dp.accounting import check_epsilon
from client_agent.errors import (
    BudgetExceeded,
    InvalidPrivacyParametersError,
    TrainingIntegrityError,
)
from client_agent.rewards import FrozenMLPReward, LoraMiniLMReward, TinyVLTReward, pair_accuracy
from corpus.builders import build_client_pairs
from embed.encoders import default_text_model_path

BUDGET = PrivacyBudget(epsilon=8.0, delta=1e-5)
POLICY_MAX = PrivacyBudget(epsilon=10.0, delta=1e-5)


@pytest.fixture(scope="module")
def data():
    return build_client_pairs("medical", 600, seed=0), build_client_pairs("medical", 300, split="test", seed=1)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    from transformers import AutoTokenizer, BertConfig, BertModel

    path = tmp_path_factory.mktemp("tiny-bert-dp")
    tok = AutoTokenizer.from_pretrained(str(default_text_model_path()), local_files_only=True)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


def _opacus_prv_from_scratch(history, delta: float) -> float:
    from opacus.accountants import PRVAccountant

    acc = PRVAccountant()
    for sigma, q, steps in history:
        for _ in range(steps):
            acc.step(noise_multiplier=sigma, sample_rate=q)
    return float(acc.get_epsilon(delta))


# name -> (model factory, optimizer factory, train_private kwargs)
CASES: dict[str, tuple[Any, Any, dict[str, Any]]] = {
    "frozen-mlp": (lambda: FrozenMLPReward(hidden=128),
                   lambda ps: torch.optim.Adam(ps, lr=0.05), dict(epochs=20, batch_size=200, clipping="ghost")),
    # from scratch needs more pairs to beat DP noise; it needs no image encoder, so they are cheap
    "tiny-vlt": (lambda: TinyVLTReward(),
                 lambda ps: torch.optim.Adam(ps, lr=0.006), dict(epochs=8, batch_size=300, n_train=1200)),
    "lora-minilm": (lambda: LoraMiniLMReward.from_pretrained(num_layers=2, max_len=48),
                    lambda ps: torch.optim.Adam(ps, lr=0.02), dict(epochs=4, batch_size=150)),
}


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(CASES))
def test_architecture_learns_under_dp_budget(arch, data, record_property):
    train, test = data
    make_model, make_opt, kwargs = CASES[arch]
    kwargs = dict(kwargs)
    n_train = kwargs.pop("n_train", len(train))
    if n_train != len(train):
        train = build_client_pairs("medical", n_train, seed=0)
    model = make_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = make_opt([p for p in model.parameters() if p.requires_grad])
    with pytest.warns(InsecurePilotWarning, match="INSECURE PILOT"):
        result = train_private(model=model, optimizer=optimizer, train_pairs=train, budget=BUDGET,
                               max_budget=POLICY_MAX, max_grad_norm=1.0, insecure_pilot=True, seed=0,
                               progress=False, **kwargs)
    accuracy = pair_accuracy(model, model.featurize(test))
    record_property("held_out_accuracy", accuracy)
    print(f"\n{arch}: held-out pair accuracy {accuracy:.3f} at eps={result.epsilon:.3f} delta={result.delta:g} "
          f"sigma={result.noise_multiplier:.3f} q={result.sample_rate:.3f} steps={result.steps} "
          f"train {result.seconds:.1f}s")

    # the budget was spent, not exceeded, and the run is described truthfully
    assert 7.5 < result.epsilon <= BUDGET.epsilon * 1.01
    assert result.accountant == "prv" and result.insecure_pilot and not result.secure_mode
    assert result.dataset_size == len(train) and result.steps == result.epochs * round(1 / result.sample_rate)
    assert result.clipping == kwargs.get("clipping", "flat")
    # eps from the logged (sigma, q, steps) with two accountants that share no state with training
    assert math.isclose(recompute_epsilon(result.history, result.delta), result.epsilon, rel_tol=0.01)
    assert math.isclose(_opacus_prv_from_scratch(result.history, result.delta), result.epsilon, rel_tol=0.01)
    # weights meant to train moved; frozen pretrained weights did not
    for name, p in model.named_parameters():
        moved = not torch.equal(p.detach(), before[name])
        assert moved == (name in model.trainable_parameter_names()), name
    # and it learned the private preference beyond chance
    assert accuracy > 0.6, f"{arch} held-out accuracy {accuracy:.3f}"


def test_independent_accountant_agrees_with_opacus_on_known_histories():
    single = [(0.94, 256 / 60000, 1000)]
    assert recompute_epsilon(single, 1e-5) == pytest.approx(0.852, abs=0.01)
    mixed = [(1.1, 0.05, 100), (0.8, 0.1, 40)]
    assert recompute_epsilon(mixed, 1e-6) == pytest.approx(_opacus_prv_from_scratch(mixed, 1e-6), rel=0.01)
    with pytest.raises(TrainingIntegrityError, match="disagrees"):
        check_epsilon(recompute_epsilon(mixed, 1e-6) * 0.9, mixed, 1e-6)


def _refuse(**overrides):
    pairs = build_client_pairs("finance", 50, seed=5)
    model = TinyVLTReward(dim=16, heads=2, max_text=16)
    kwargs = dict(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), train_pairs=pairs,
                  budget=PrivacyBudget(1.0, 1e-3), max_budget=PrivacyBudget(2.0, 1e-3), epochs=1, batch_size=10,
                  max_grad_norm=1.0, insecure_pilot=True, progress=False)
    kwargs.update(overrides)
    return train_private(**kwargs)  # type: ignore[arg-type]


def test_delta_not_below_one_over_n_is_refused():
    with pytest.raises(InvalidPrivacyParametersError, match=r"delta=0.02 must be < 1/N = 0.02 for N=50"):
        _refuse(budget=PrivacyBudget(1.0, 0.02), max_budget=PrivacyBudget(2.0, 0.05))


def test_budget_over_policy_maximum_is_refused():
    with pytest.raises(BudgetExceeded, match="epsilon=3.0.*exceeds the policy maximum.*epsilon=2.0"):
        _refuse(budget=PrivacyBudget(3.0, 1e-3))
    with pytest.raises(BudgetExceeded, match="delta"):
        _refuse(budget=PrivacyBudget(1.0, 1e-3), max_budget=PrivacyBudget(2.0, 1e-4))


@pytest.mark.parametrize(("eps", "delta"), [(0.0, 1e-5), (-1.0, 1e-5), (math.inf, 1e-5), (1.0, 0.0), (1.0, 1.0)])
def test_privacy_budget_validates_itself(eps, delta):
    with pytest.raises(InvalidPrivacyParametersError, match="PrivacyBudget"):
        PrivacyBudget(eps, delta)


def test_insecure_settings_need_the_pilot_flag():
    with pytest.raises(InvalidPrivacyParametersError, match="insecure_pilot=True"):
        _refuse(insecure_pilot=False, secure_mode=False)
    with pytest.raises(InvalidPrivacyParametersError, match="seed="):
        _refuse(insecure_pilot=False, seed=1)
    with pytest.raises(InvalidPrivacyParametersError, match="batch_size"):
        _refuse(batch_size=51)
    with pytest.raises(InvalidPrivacyParametersError, match="accountant"):
        _refuse(accountant="moments")


def _lora_run(tiny_bert: Path, optimizer_for, **kw):
    pairs = build_client_pairs("finance", 40, seed=2)
    model = LoraMiniLMReward.from_pretrained(tiny_bert, max_len=32, lora_r=2)
    kw.setdefault("optimizer", optimizer_for(model))
    with pytest.warns(InsecurePilotWarning):
        return model, train_private(model=model, train_pairs=pairs, budget=PrivacyBudget(8.0, 1e-3),
                                    max_budget=PrivacyBudget(8.0, 1e-3), epochs=2, batch_size=10, max_grad_norm=1.0,
                                    insecure_pilot=True, seed=0, progress=False, **kw)


def _lora_params(model):
    return [p for n, p in model.named_parameters() if "lora_" in n]


def _other_params(model):
    return [p for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n]


def test_guard_820_refuses_lora_frozen_by_mistake(tiny_bert):
    def optimizer_for(model):
        for p in _lora_params(model):
            p.requires_grad_(False)  # the mistake
        return torch.optim.SGD(_other_params(model), lr=0.1)

    with pytest.raises(TrainingIntegrityError, match="requires_grad=False.*lora_"):
        _lora_run(tiny_bert, optimizer_for)


def test_guard_820_fires_when_lora_weights_silently_do_not_move(tiny_bert):
    def optimizer_for(model):  # LoRA gets gradients and noise, but a zero step size: loss and eps look fine
        return torch.optim.SGD([{"params": _lora_params(model), "lr": 0.0},
                                {"params": _other_params(model), "lr": 0.1}])

    with pytest.raises(TrainingIntegrityError, match="epoch 1: trainable parameter .*lora_.* did not change"):
        _lora_run(tiny_bert, optimizer_for)


def test_guard_820_fires_on_non_finite_weights(tiny_bert):
    def optimizer_for(model):
        return torch.optim.SGD(model.parameters(), lr=math.inf)

    with pytest.raises(TrainingIntegrityError, match="non-finite"):
        _lora_run(tiny_bert, optimizer_for)


def test_small_lora_run_passes_the_guard_and_moves_lora(tiny_bert):
    def optimizer_for(model):
        return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)

    model, result = _lora_run(tiny_bert, optimizer_for)
    assert result.epsilon <= 8.0 * 1.01 and len(result.epoch_losses) == 2
    assert all(torch.isfinite(p).all() for p in _lora_params(model))
