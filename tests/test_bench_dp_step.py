"""Bench section 3 (DP step cost) reports a number only for what it measured: a failed production step or
baseline fails the section, an unavailable alternative is a note without a figure, unmeasurable memory is a
note; and the production step it times is the one train_private runs (shared code, same clipping mode)."""

from __future__ import annotations

import math

import pytest
import torch

from client_agent.rewards import FrozenMLPReward
from sim.bench import dp_step
from sim.bench.dp_step import Mode, modes_for
from sim.errors import BenchMeasurementError


def _tiny() -> tuple[FrozenMLPReward, tuple[torch.Tensor, ...]]:
    gen = torch.Generator().manual_seed(0)
    model = FrozenMLPReward(hidden=4, image_dim=8, text_dim=4)
    batch = (torch.randn(6, 8, generator=gen), torch.randn(6, 4, generator=gen), torch.randn(6, 2, 4, generator=gen))
    return model, batch


def _figures(modes: list[Mode], notes: list[str]) -> dict[str, dict]:
    model, batch = _tiny()
    figures = dp_step._arch_figures("m", model, batch, modes, repeats=2, smoke=True, notes=notes)
    return {f.name: f.as_dict() for f in figures}


def test_production_is_what_train_private_runs_and_comes_first():
    modes = modes_for(FrozenMLPReward(hidden=4, image_dim=8, text_dim=4))
    assert modes[0] == Mode("bk", True, production=True)  # clipping "auto", CSPRNG noise
    assert [m.production for m in modes].count(True) == 1
    assert {(m.clipping, m.secure) for m in modes[1:]} == {("flat", True), ("ghost", True), ("bk", False)}


def test_every_mode_measured_gives_a_finite_paired_ratio():
    notes: list[str] = []
    figures = _figures(modes_for(FrozenMLPReward(hidden=4, image_dim=8, text_dim=4)), notes)
    assert "m bk+CSPRNG [production] step" in figures and "m bk+CSPRNG [production] peak mem" in figures
    assert figures["m bk+CSPRNG [production] step"]["extra"]["production"] is True
    assert figures["m flat+CSPRNG step"]["extra"]["production"] is False
    for f in figures.values():
        assert f["baseline_name"] == "non-private" and f["repeats"] == 2
        assert math.isfinite(f["ratio"]) and f["ratio"] > 0
    step = figures["m bk+CSPRNG [production] step"]["extra"]
    assert step["clock"] == "process CPU time" and step["wall_s"] > 0
    assert step["trainable_params"] == (8 + 3 * 4) * 4 + 4 + 5  # fc1 over [img, q, r, q*r], fc2


def test_a_failed_production_step_fails_the_section(monkeypatch):
    def broken(model, batch, mode):
        if mode.production:
            raise RuntimeError("boom")
        return lambda: None

    monkeypatch.setattr(dp_step, "_private_step", broken)
    with pytest.raises(BenchMeasurementError, match="production DP step failed: RuntimeError: boom"):
        _figures(modes_for(FrozenMLPReward(hidden=4, image_dim=8, text_dim=4)), [])


def test_an_unavailable_alternative_is_a_note_and_no_figure(monkeypatch):
    real = dp_step._private_step

    def ghost_fails(model, batch, mode):
        if mode.clipping == "ghost":
            raise AttributeError("'Parameter' object has no attribute '_norm_sample'")
        return real(model, batch, mode)

    monkeypatch.setattr(dp_step, "_private_step", ghost_fails)
    notes: list[str] = []
    figures = _figures(modes_for(FrozenMLPReward(hidden=4, image_dim=8, text_dim=4)), notes)
    assert not any("ghost" in name for name in figures)
    assert any("ghost+CSPRNG unavailable, no figure" in n and "more than 3" in n for n in notes)


def test_a_failure_while_timing_drops_the_mode_and_a_broken_baseline_fails(monkeypatch):
    real = dp_step._private_step

    def flaky(model, batch, mode):
        step = real(model, batch, mode)
        if mode.clipping != "flat":
            return step
        calls = {"n": 0}

        def once_then_fail() -> None:
            calls["n"] += 1
            if calls["n"] > 1:  # the warm-up passes, the timed steps fail
                raise RuntimeError("flaky")
            step()

        return once_then_fail

    monkeypatch.setattr(dp_step, "_private_step", flaky)
    notes: list[str] = []
    figures = _figures(modes_for(FrozenMLPReward(hidden=4, image_dim=8, text_dim=4)), notes)
    assert not any("flat" in name for name in figures) and any("flat+CSPRNG failed" in n for n in notes)

    monkeypatch.setattr(dp_step, "_plain_step", lambda model, batch: (lambda: (_ for _ in ()).throw(RuntimeError("x"))))
    with pytest.raises(BenchMeasurementError):
        _figures([Mode("bk", True, production=True)], [])


def test_unmeasurable_memory_is_a_note_not_a_number(monkeypatch):
    monkeypatch.setattr(dp_step, "peak_extra_mib", lambda fn: (fn(), None))
    notes: list[str] = []
    figures = _figures([Mode("bk", True, production=True)], notes)
    assert list(figures) == ["m bk+CSPRNG [production] step"]
    assert any("peak memory not measurable" in n for n in notes)
