"""A benchmark that failed to measure reports failure, never a figure (issue 14 §6).

The 64-agent scaling run once skipped its rounds and still printed a ratio. Each section turns
what it measured into figures in one place; these tests feed those places a level that failed
(a skipped round, a failed request, a lost receipt, nothing accepted) and expect
:class:`~sim.errors.BenchMeasurementError` — which ``mor bench`` records as a failed section and
exits 1 — while a clean sample still gives figures.
"""

from __future__ import annotations

from typing import Any

import pytest

from sim.bench import ingest, scaling
from sim.errors import BenchMeasurementError


def _level(accepted: int = 50, **changes: Any) -> dict[str, Any]:
    level = {"connections": 8, "transport": "json", "seconds": 8.0, "accepted": accepted,
             "receipts_valid": accepted, "db_rows": accepted, "audit_entries": accepted,
             "envelopes_per_s": accepted / 8.0, "cpu_per_envelope_s": 0.01, "per_commit": 2.0, "p50_s": 0.05,
             "p99_s": 0.2, "errors": {}}
    return {**level, **changes}


def _samples(bad: dict[str, Any] | None = None) -> dict[tuple[int, str], list[dict[str, Any]]]:
    """Two levels, both transports; the binary transport at 64 connections carries ``bad``."""
    return {(8, "json"): [_level()], (8, "binary"): [_level(cpu_per_envelope_s=0.005)],
            (64, "json"): [_level(80)], (64, "binary"): [_level(**{"accepted": 80, **(bad or {})})]}


def test_clean_ingest_levels_give_figures() -> None:
    result = ingest._result((8, 64), _samples(), {})
    by_name = {f.name: f for f in result.figures}
    assert result.checks["nothing_lost"] is True
    per_core = by_name["8 connections, binary: envelopes/s per server core"]
    assert (per_core.value, per_core.baseline, per_core.ratio) == (200.0, 100.0, 2.0)
    assert by_name["8 connections, binary: server CPU per envelope"].ratio == 0.5


def test_the_http_parser_comparison_names_its_variants_and_still_refuses_a_lost_receipt() -> None:
    base, new = ingest.HTTP_VARIANTS  # mor bench --sections 4 --compare-http: binary over h11, then httptools
    samples = {(8, base): [_level()], (8, new): [_level(cpu_per_envelope_s=0.008)]}
    by_name = {f.name: f for f in ingest._result((8,), samples, {}, ingest.HTTP_VARIANTS).figures}
    figure = by_name["8 connections, binary/httptools: server CPU per envelope"]
    assert (figure.baseline_name, figure.ratio) == ("binary/h11: server CPU per envelope", 0.8)
    with pytest.raises(BenchMeasurementError, match="binary/httptools"):
        ingest._result((8,), {**samples, (8, new): [_level(db_rows=49)]}, {}, ingest.HTTP_VARIANTS)


@pytest.mark.parametrize("bad", [
    {"errors": {"503:storage_unavailable": 1}},  # a failed request
    {"db_rows": 79},  # a receipt without its row
    {"audit_entries": 79},  # a receipt without its audit entry
    {"receipts_valid": 79},  # a receipt whose signature or digest did not verify
    {"accepted": 0, "receipts_valid": 0, "db_rows": 0, "audit_entries": 0},  # nothing measured
])
def test_an_ingest_level_that_failed_is_an_error_not_a_figure(bad: dict[str, Any]) -> None:
    with pytest.raises(BenchMeasurementError, match="no figure"):
        ingest._result((8, 64), _samples(bad), {})


def test_skipped_or_missing_scaling_rounds_are_an_error_not_a_figure() -> None:
    clean = {2: [0.1, 0.1], 64: [0.2, 0.3]}
    assert len(scaling._result((2, 64), clean, 0, 2).figures) == 2
    with pytest.raises(BenchMeasurementError, match="skipped"):
        scaling._result((2, 64), clean, 1, 2)
    with pytest.raises(BenchMeasurementError, match="not run"):
        scaling._result((2, 64), {2: [0.1, 0.1], 64: [0.2]}, 0, 2)
