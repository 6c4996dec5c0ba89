"""Resume and progress: every (method, seed) result is a file written the moment it is finished.

An interrupted ``mor eval`` loses at most the GRPO run in flight: rerun the same command with the
same ``--out`` and finished cells are read back, not recomputed. Cells live in
``OUT/cells/seed-<s>/<method>.json`` (written to a temporary name, then renamed, so a cell file
is whole or absent). ``OUT/cells/config.json`` holds the configuration fingerprint — everything
but the seed list and the chosen rows — and a run whose fingerprint differs refuses to mix its
cells with the old ones (adding seeds or rows to a finished run is allowed).

Progress: after each cell, one line with the count done, the elapsed time and an ETA from the
mean time of the cells computed in this process (skipped cells cost nothing and are not timed).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sim.errors import EvalConfigError


def _safe(method: str) -> str:
    return method.replace(":", "__")


class CellStore:
    """Finished cells of one output folder (see the module docstring)."""

    def __init__(self, out_dir: Path, fingerprint: dict[str, Any]) -> None:
        self.root = Path(out_dir) / "cells"
        self.root.mkdir(parents=True, exist_ok=True)
        marker = self.root / "config.json"
        wanted = json.loads(json.dumps(fingerprint, sort_keys=True, default=str))
        if marker.is_file():
            found = json.loads(marker.read_text(encoding="utf-8"))
            if found != wanted:
                changed = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
                raise EvalConfigError(f"{self.root} holds cells of another configuration (differs in {changed}); "
                                      "use another --out, or delete that folder to start over")
        else:
            self._write(marker, wanted)

    def path(self, seed: int, method: str) -> Path:
        return self.root / f"seed-{seed}" / f"{_safe(method)}.json"

    def has(self, seed: int, method: str) -> bool:
        return self.path(seed, method).is_file()

    def load(self, seed: int, method: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.path(seed, method).read_text(encoding="utf-8"))
        return data

    def save(self, seed: int, method: str, cell: dict[str, Any]) -> None:
        self._write(self.path(seed, method), cell)

    @staticmethod
    def _write(path: Path, data: Any) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, sort_keys=True, default=str), encoding="utf-8")
        os.replace(tmp, path)


class Progress:
    """``[done/total]`` lines with elapsed time and an ETA from this process's cell times."""

    def __init__(self, total: int, echo: Callable[[str], None], clock: Callable[[], float] = time.perf_counter
                 ) -> None:
        self.total, self.echo, self.clock = total, echo, clock
        self.started = clock()
        self.done = self.computed = 0

    def skipped(self, label: str) -> None:
        self.done += 1
        self.echo(f"[{self.done}/{self.total}] {label}: already done (resumed)")

    def finished(self, label: str, detail: str = "", *, timed: bool = True) -> None:
        """One cell done; ``timed=False`` for cells that cost nothing (they would drag the ETA down)."""
        self.done += 1
        self.computed += timed
        elapsed = self.clock() - self.started
        eta = f"{elapsed / self.computed * (self.total - self.done) / 60:.1f} min" if self.computed else "n/a"
        self.echo(f"[{self.done}/{self.total}] {label}{': ' + detail if detail else ''} | elapsed "
                  f"{elapsed / 60:.1f} min, ETA {eta}")


__all__ = ["CellStore", "Progress"]
