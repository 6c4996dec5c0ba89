"""The benchmark report: one table on stdout and one JSON file, with the machine and the command.

A figure without its machine and load is not a result, so every report carries the CPU,
core count, memory, library versions, the load average before and after, the date and the
exact command line; ``docs/benchmarks.md`` is written from the same data.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from sim.bench.stats import Figure

_VERSIONS = ("torch", "transformers", "trl", "peft", "opacus", "tenseal", "fastapi", "uvicorn", "httpx")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    """What the figures were measured on (CPU, cores, memory, OS, library versions, load)."""
    return {
        "cpu": _cpu_model(), "cores": os.cpu_count(), "memory_gib": _memory_gib(),
        "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
        "versions": {name: _version(name) for name in _VERSIONS}, "loadavg_start": list(os.getloadavg()),
    }


@dataclass
class BenchReport:
    """Everything one ``mor bench`` run measured."""

    command: str
    smoke: bool
    repeats: int
    machine: dict[str, Any] = field(default_factory=machine)
    started: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    figures: list[Figure] = field(default_factory=list)
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)

    def add(self, figures: Sequence[Figure]) -> None:
        self.figures.extend(figures)

    def note(self, section: str, text: str) -> None:
        self.notes.setdefault(section, []).append(text)

    def as_dict(self) -> dict[str, Any]:
        finished = {**self.machine, "loadavg_end": list(os.getloadavg())}
        return {
            "command": self.command, "smoke": self.smoke, "repeats": self.repeats, "started": self.started,
            "machine": finished, "figures": [f.as_dict() for f in self.figures], "checks": self.checks,
            "notes": self.notes, "seconds": self.seconds, "failed": self.failed,
        }

    def write_json(self, out_dir: Path) -> Path:
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "bench.json"
        path.write_text(json.dumps(self.as_dict(), indent=2, sort_keys=True, allow_nan=False) + "\n", "utf-8")
        return path

    def table(self) -> str:
        """The figures as a Markdown table (also what the docs page embeds)."""
        return format_table(self.figures)


def _num(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    magnitude = abs(value)
    if magnitude == 0:
        return "0"
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 0.01:
        return f"{value:.3f}"
    return f"{value:.2e}"


def format_table(figures: Sequence[Figure]) -> str:
    header = "| section | figure | value | baseline | ratio (median) | spread (min..max) | n |"
    lines = [header, "|---|---|---|---|---|---|---|"]
    for f in figures:
        lines.append(
            f"| {f.section} | {f.name} | {_num(f.value)} {f.unit} | {f.baseline_name}: {_num(f.baseline)} {f.unit} "
            f"| **{f.ratio:.2f}x** | {f.ratio_min:.2f}..{f.ratio_max:.2f} | {f.repeats} |"
        )
    return "\n".join(lines)
