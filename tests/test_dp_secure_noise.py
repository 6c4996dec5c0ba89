"""CSPRNG noise and Poisson sampling for DP-SGD without torchcsprng: distribution, freshness, sampling
rate, and that Opacus's accounting (noise multiplier, ε, the independent re-check) is unchanged.

Statistical tests use α = 0.001 each (a correct sampler fails one of them about once in a thousand
runs); the moment checks use 5 standard errors (about 6e-7 two-sided)."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from scipy import stats

from client_agent.dp import PrivacyBudget, recompute_epsilon, train_private
from client_agent.dp.secure_engine import (
    NOISE_SOURCE_PILOT,
    NOISE_SOURCE_SECURE,
    CsprngDPOptimizer,
    CsprngPoissonBatchSampler,
    CsprngPrivacyEngine,
)
from client_agent.dp.secure_noise import CsprngStream
from client_agent.rewards import TinyVLTReward
from corpus.builders import build_client_pairs

ALPHA = 1e-3


def test_gaussian_mean_variance_and_goodness_of_fit():
    std, n = 1.7, 200_000
    x = CsprngStream().gaussian((n,), std, dtype=torch.float64).numpy()
    assert abs(x.mean()) < 5 * std / math.sqrt(n)
    assert abs(x.var() - std**2) < 5 * std**2 * math.sqrt(2 / n)
    assert stats.kstest(x, "norm", args=(0.0, std)).pvalue > ALPHA
    assert stats.normaltest(x).pvalue > ALPHA  # skewness and kurtosis of a Gaussian


def test_uniforms_are_open_interval_and_uniform():
    u = CsprngStream().uniform(100_000)
    assert u.dtype == torch.float64 and float(u.min()) > 0 and float(u.max()) < 1
    assert stats.kstest(u.numpy(), "uniform").pvalue > ALPHA


def test_the_extreme_keystream_words_still_give_uniforms_strictly_inside_0_1(monkeypatch):
    """All-ones and all-zeros words are the grid's ends: 1.0 or 0.0 there would make log(u) infinite."""
    stream = CsprngStream()
    for fill in (0xFF, 0x00):
        monkeypatch.setattr(stream, "_keystream", lambda n, fill=fill: bytearray([fill]) * n)
        u = stream.uniform(4)
        assert bool(((u > 0) & (u < 1)).all()), u
        assert bool(torch.isfinite(u.log()).all())


def test_gaussian_shape_dtype_and_zero_std():
    stream = CsprngStream()
    noise = stream.gaussian((3, 5), 0.5)
    assert noise.shape == (3, 5) and noise.dtype == torch.float32 and bool(noise.ne(0).all())
    assert bool(stream.gaussian((4,), 0.0).eq(0).all())


def test_noise_added_in_place_chunk_by_chunk_is_the_same_gaussian():
    from client_agent.dp.secure_noise import NOISE_CHUNK

    std, n = 0.7, 3 * NOISE_CHUNK + 5  # crosses chunk boundaries, ends in a partial chunk
    base = torch.linspace(-1.0, 1.0, n, dtype=torch.float64)
    threads = torch.get_num_threads()
    noised = CsprngStream().add_gaussian_(base.clone(), std)
    assert torch.get_num_threads() == threads  # the noise loop's single thread is restored
    x = (noised - base).numpy()
    assert abs(x.mean()) < 5 * std / math.sqrt(n)
    assert abs(x.var() - std**2) < 5 * std**2 * math.sqrt(2 / n)
    assert stats.kstest(x, "norm", args=(0.0, std)).pvalue > ALPHA
    with pytest.raises(ValueError, match="contiguous"):
        CsprngStream().add_gaussian_(torch.zeros(4, 4).t(), 1.0)


def test_draws_are_copied_out_of_the_reused_keystream_buffer():
    stream = CsprngStream()
    first = stream.uniform(1000)
    kept = first.clone()
    stream.uniform(1000)
    stream.random_bytes(64)
    assert torch.equal(first, kept)


def test_no_two_streams_and_no_two_draws_agree_even_with_torch_seeded():
    torch.manual_seed(0)
    a = CsprngStream().gaussian((1000,), 1.0)
    torch.manual_seed(0)  # the torch generator plays no part
    b = CsprngStream().gaussian((1000,), 1.0)
    stream = CsprngStream()
    assert not torch.equal(a, b)
    assert not torch.equal(stream.gaussian((1000,), 1.0), stream.gaussian((1000,), 1.0))
    assert CsprngStream().random_bytes(32) != CsprngStream().random_bytes(32)


def test_poisson_sampling_rate_is_respected():
    n, q, steps = 400, 0.05, 500
    sampler = CsprngPoissonBatchSampler(n, q, steps, CsprngStream())
    batches = list(sampler)
    assert len(batches) == len(sampler) == steps
    sizes = [len(b) for b in batches]
    assert abs(sum(sizes) / steps - n * q) < 5 * math.sqrt(n * q * (1 - q) / steps)
    assert all(len(set(b)) == len(b) and all(0 <= i < n for i in b) for b in batches)
    # each pair's inclusion count is Binomial(steps, q): chi-square of per-index counts, α = 0.001
    counts = torch.zeros(n)
    for b in batches:
        counts[b] += 1
    expected, variance = steps * q, steps * q * (1 - q)
    chi2 = float(((counts - expected) ** 2 / variance).sum())
    assert stats.chi2.sf(chi2, df=n) > ALPHA
    with pytest.raises(Exception, match="Poisson sampler"):
        CsprngPoissonBatchSampler(n, 0.0, steps, CsprngStream())


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    return build_client_pairs("finance", 60, seed=5), TinyVLTReward(dim=16, heads=2, max_text=16)


def _train(setup, *, pilot: bool, seed: int | None = None):
    pairs, template = setup
    model = copy.deepcopy(template)  # same initial weights for every run
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = train_private(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), train_pairs=pairs,
                               budget=PrivacyBudget(2.0, 1e-3), max_budget=PrivacyBudget(3.0, 1e-3), epochs=2,
                               batch_size=20, max_grad_norm=1.0, insecure_pilot=pilot, seed=seed, progress=False)
    return model, result


def test_secure_training_needs_no_torchcsprng_and_keeps_the_accounting(setup):
    _, secure = _train(setup, pilot=False)
    _, pilot = _train(setup, pilot=True, seed=0)
    assert secure.secure_mode and not secure.insecure_pilot and secure.noise_source == NOISE_SOURCE_SECURE
    assert pilot.noise_source == NOISE_SOURCE_PILOT and not pilot.secure_mode
    # same Opacus noise calibration and accountant: the noise source changes nothing in ε
    assert secure.noise_multiplier == pilot.noise_multiplier and secure.sample_rate == pilot.sample_rate
    assert secure.steps == pilot.steps == 2 * 3
    assert secure.epsilon == pytest.approx(pilot.epsilon, rel=1e-9)
    assert math.isclose(recompute_epsilon(secure.history, secure.delta), secure.epsilon, rel_tol=0.01)
    assert math.isclose(secure.epsilon_independent, secure.epsilon, rel_tol=0.01)


def test_ghost_clipping_gets_the_csprng_optimizer_too():
    from client_agent.dp.secure_engine import CsprngDPOptimizerFastGradientClipping

    layer = torch.nn.Linear(4, 1)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(40, 4)), batch_size=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapped = CsprngPrivacyEngine().make_private(
            module=layer, optimizer=torch.optim.SGD(layer.parameters(), lr=1), criterion=torch.nn.MSELoss(),
            data_loader=loader, noise_multiplier=1.0, max_grad_norm=1.0, poisson_sampling=False,
            grad_sample_mode="ghost")
    assert isinstance(wrapped[1], CsprngDPOptimizerFastGradientClipping)


def _noise_only(steps: int) -> torch.Tensor:
    """What a CSPRNG DPOptimizer puts into p.grad when every per-sample gradient is zero: the noise."""
    layer = torch.nn.Linear(4, 1)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(40, 4)), batch_size=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module, optimizer, _ = CsprngPrivacyEngine().make_private(
            module=layer, optimizer=torch.optim.SGD(layer.parameters(), lr=1), data_loader=loader,
            noise_multiplier=2.0, max_grad_norm=0.5, poisson_sampling=False, loss_reduction="sum")
        assert isinstance(optimizer, CsprngDPOptimizer)
        draws = []
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            module(torch.zeros(1, 4)).sum().mul(0).backward()
            optimizer.pre_step()
            draws.append(torch.cat([p.grad.flatten() for p in module.parameters()]))
    return torch.cat(draws)


def test_optimizer_noise_has_opacus_std():
    x = _noise_only(300).double().numpy()  # std = noise_multiplier * max_grad_norm = 1.0
    assert stats.kstest(x, "norm", args=(0.0, 1.0)).pvalue > ALPHA


def test_no_two_trainings_draw_the_same_noise_even_with_torch_seeded():
    torch.manual_seed(0)
    first = _noise_only(3)
    torch.manual_seed(0)
    assert not torch.equal(first, _noise_only(3))
