"""``mor bench``: the cost of privacy, measured as ratios to baselines timed in the same run.

Sections (issue #6), each a module with ``run(*, repeats, smoke, seed) -> SectionResult``:

====  ==========================  =============================================================
1     :mod:`sim.bench.exchange`   one 512-response round, 3 real reward models, mTLS vs in-process
2     :mod:`sim.bench.ckks_cost`  CKKS seal+open per score and bytes per score, 64..4096 scores
3     :mod:`sim.bench.dp_step`    DP step as members run it vs non-private: time, peak memory
4     :mod:`sim.bench.ingest`     server ingest over 8/32/64 connections, binary vs JSON transport
5     :mod:`sim.bench.scaling`    round latency for 2..64 agents
6     :mod:`sim.bench.grpo_step`  GRPO step with the federated reward vs an in-process reward,
                                  and with the trainer apart from the service (:mod:`sim.bench.grpo_split`)
====  ==========================  =============================================================

Every section is bounded in time, loopback-only, and stops by itself; ``smoke=True`` is the
tiny configuration the test suite runs so the benchmark keeps working.
"""

from __future__ import annotations

import importlib
import logging
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from sim.bench.report import BenchReport
from sim.bench.stats import Figure, SectionResult

SECTIONS: dict[int, str] = {
    1: "sim.bench.exchange",
    2: "sim.bench.ckks_cost",
    3: "sim.bench.dp_step",
    4: "sim.bench.ingest",
    5: "sim.bench.scaling",
    6: "sim.bench.grpo_step",
}
ORDER = (2, 3, 6, 1, 4, 5)  # no network first: a broken server must not cost the offline figures

log = logging.getLogger(__name__)

__all__ = ["ORDER", "SECTIONS", "BenchReport", "Figure", "SectionResult", "run_bench"]


def run_bench(sections: Sequence[int], *, repeats: int, smoke: bool, out_dir: Path, command: str,
              seed: int = 0, compare_polling: bool = False, compare_http: bool = False) -> BenchReport:
    """Run ``sections`` (in :data:`ORDER`), write ``out_dir/bench.json`` after each, return the report.

    A section that fails is recorded (``failed``, with its error) and the others still run: one
    broken dependency must not hide every other figure. The JSON is rewritten after each
    section so an interrupted run keeps what it measured. ``compare_polling`` adds section 1's
    before/after round with the coordinator's old poll interval; ``compare_http`` makes section 4
    compare the binary transport over the h11 and the httptools HTTP parser.
    """
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown section(s) {unknown}; known: {sorted(SECTIONS)}")
    report = BenchReport(command=command, smoke=smoke, repeats=repeats)
    for number in (n for n in ORDER if n in set(sections)):
        started = time.monotonic()
        try:
            module = importlib.import_module(SECTIONS[number])
            options = {"compare_polling": compare_polling} if number == 1 else \
                {"compare_http": compare_http} if number == 4 else {}
            result: SectionResult = module.run(repeats=repeats, smoke=smoke, seed=seed, **options)
        except Exception as exc:  # noqa: BLE001 - recorded in the report, the run goes on
            log.error("bench section %d failed: %s", number, exc)
            report.failed[str(number)] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=6)}"
        else:
            report.add(result.figures)
            for text in result.notes:
                report.note(str(number), text)
            if result.checks:
                report.checks[str(number)] = result.checks
        report.seconds[str(number)] = round(time.monotonic() - started, 1)
        report.write_json(out_dir)
    return report
