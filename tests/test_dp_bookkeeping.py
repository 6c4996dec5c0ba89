"""Book-keeping clipping (``clipping = "bk"``, the default for ``frozen-mlp``) computes exactly the per-pair
clipped gradient sum: checked against clipping computed one pair at a time and against Opacus's ghost
mode on the same batch, through the real training step (CSPRNG noise, Opacus accountant, ε re-check)."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from client_agent.dp import PrivacyBudget, recompute_epsilon, train_private
from client_agent.dp.bookkeeping import BookKeepingClipper, bookkeeping_problems
from client_agent.dp.step import privatise, resolve_clipping
from client_agent.errors import InvalidPrivacyParametersError, TrainingIntegrityError
from client_agent.rewards import BradleyTerryLoss, FrozenMLPReward, TinyVLTReward

CLIP = 0.05  # small enough that every pair is clipped, so a per-answer clip would differ


def _batch(b: int = 8, seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(b, 1280, generator=gen), torch.randn(b, 384, generator=gen),
            torch.randn(b, 2, 384, generator=gen))


def _per_pair_clipped_sum(model: nn.Module, tensors: tuple[torch.Tensor, ...], clip: float) -> dict[str, torch.Tensor]:
    """The definition: each pair's full gradient, clipped to ``clip`` (Opacus's factor), summed."""
    total = {n: torch.zeros_like(p) for n, p in model.named_parameters() if p.requires_grad}
    for i in range(tensors[0].shape[0]):
        model.zero_grad()
        BradleyTerryLoss(reduction="sum")(model(*(t[i:i + 1] for t in tensors))).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        norm = torch.sqrt(sum(g.pow(2).sum() for g in grads.values()))
        factor = min(1.0, clip / (float(norm) + 1e-6))
        for n, g in grads.items():
            total[n] += factor * g
    return total


def test_clipped_sum_is_per_pair_clipping_one_pair_at_a_time():
    model, tensors = FrozenMLPReward(hidden=16), _batch()
    expected = _per_pair_clipped_sum(copy.deepcopy(model), tensors, CLIP)
    clipper = BookKeepingClipper(model, CLIP)
    norms = clipper.backward(BradleyTerryLoss(reduction="none")(model(*tensors)))
    assert bool((norms > CLIP).all())  # clipping active for every pair
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], atol=1e-6, rtol=1e-4, msg=name)


def test_clipped_sum_equals_opacus_ghost_on_the_same_batch():
    model, tensors = FrozenMLPReward(hidden=16), _batch(16, seed=3)
    ghost_model = copy.deepcopy(model)
    loader = DataLoader(TensorDataset(*tensors), batch_size=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parts = privatise(model=ghost_model, optimizer=torch.optim.SGD(ghost_model.parameters(), lr=0.0),
                          loader=loader, secure=False, accountant="prv", clipping="ghost", max_grad_norm=CLIP,
                          noise={"noise_multiplier": 1.0})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parts.criterion(parts.module(*tensors)).backward()  # Opacus ghost: two passes, p.grad = clipped sum
    clipper = BookKeepingClipper(model, CLIP)
    clipper.backward(BradleyTerryLoss(reduction="none")(model(*tensors)))
    for (name, p), q in zip(model.named_parameters(), ghost_model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-4, msg=name)
    parts.release()


def test_explicit_per_pair_norm_path_matches_too():
    """Layers where T^2 (in + out) > in * out take the explicit per-pair gradient for the norm."""
    layer = nn.Sequential(nn.Linear(3, 2), nn.Tanh(), nn.Linear(2, 1))

    class Seq(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = layer

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [B, K=2, T=6, 3] -> [B, K]
            return self.net(x).squeeze(-1).sum(-1)

    model = Seq()
    x = (torch.randn(5, 2, 6, 3, generator=torch.Generator().manual_seed(1)),)
    expected = _per_pair_clipped_sum(copy.deepcopy(model), x, 0.01)
    BookKeepingClipper(model, 0.01).backward(BradleyTerryLoss(reduction="none")(model(*x)))
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], atol=1e-6, rtol=1e-4, msg=name)


def test_non_linear_trainable_layers_and_reused_layers_are_refused():
    assert bookkeeping_problems(FrozenMLPReward(hidden=8)) == []
    tiny = TinyVLTReward(dim=8, heads=2, max_text=8)
    assert any("token_embed" in p for p in bookkeeping_problems(tiny))
    with pytest.raises(InvalidPrivacyParametersError, match="nn.Linear"):
        BookKeepingClipper(tiny, 1.0)

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([self.fc(x[:, 0]), self.fc(x[:, 1])], dim=1)

    model = Twice()
    clipper = BookKeepingClipper(model, 1.0)
    with pytest.raises(TrainingIntegrityError, match="called twice"):
        model(torch.randn(3, 2, 4))
    clipper.remove()
    model(torch.randn(3, 2, 4))  # hooks gone with remove()

    frozen, tensors = FrozenMLPReward(hidden=4), _batch(3)
    clipper = BookKeepingClipper(frozen, 1.0)
    frozen.eval()  # its layers record nothing: refused, never a step of pure noise
    with pytest.raises(TrainingIntegrityError, match="did not run in training mode"):
        clipper.backward(BradleyTerryLoss(reduction="none")(frozen(*tensors)))


def test_auto_picks_bookkeeping_for_frozen_mlp_and_flat_elsewhere():
    assert resolve_clipping(FrozenMLPReward(hidden=8), "auto") == "bk"
    assert resolve_clipping(TinyVLTReward(dim=8, heads=2, max_text=8), "auto") == "flat"
    assert resolve_clipping(TinyVLTReward(dim=8, heads=2, max_text=8), "ghost") == "ghost"
    with pytest.raises(InvalidPrivacyParametersError, match="clipping="):
        resolve_clipping(FrozenMLPReward(hidden=8), "fast")


@pytest.mark.slow
def test_secure_training_with_bookkeeping_keeps_the_accounting_and_learns_the_guarded_weights():
    from corpus.builders import build_client_pairs

    pairs = build_client_pairs("medical", 120, seed=0)
    results = {}
    for clipping in ("bk", "ghost"):
        model = FrozenMLPReward(hidden=16)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results[clipping] = train_private(
                model=model, optimizer=torch.optim.Adam(model.parameters(), lr=0.05), train_pairs=pairs,
                budget=PrivacyBudget(4.0, 1e-3), max_budget=PrivacyBudget(8.0, 1e-3), epochs=3, batch_size=40,
                max_grad_norm=1.0, clipping=clipping, progress=False)
    bk, ghost = results["bk"], results["ghost"]
    assert bk.clipping == "bk" and bk.secure_mode and not bk.insecure_pilot
    # the clipping mode changes nothing in the accounting: same noise, same rate, same steps, same ε
    assert (bk.noise_multiplier, bk.sample_rate, bk.steps) == (ghost.noise_multiplier, ghost.sample_rate, ghost.steps)
    assert bk.epsilon == pytest.approx(ghost.epsilon, rel=1e-9)
    assert math.isclose(recompute_epsilon(bk.history, bk.delta), bk.epsilon, rel_tol=0.01)
    assert all(math.isfinite(x) for x in bk.epoch_losses)
