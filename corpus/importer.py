"""``mor data import``: a user's table + image folder -> a dataset folder, all or nothing.

Why all or nothing: a half-imported dataset trains a reward model on part of a member's data
without anyone noticing. So every row is checked first (all problems are collected and
reported together as ``file:line: key: reason``), images are written into a temporary folder
next to ``--out``, and only a complete, fsynced dataset is renamed into place. An interrupted
import leaves at most a hidden ``.<name>.importing-*`` folder, never a dataset.

Columns: ``image`` (path relative to ``--images``), ``question``; optional ``id`` (unique;
default ``<table stem>-<line>``), ``domain`` (any non-empty name; column absent ->
``general``), ``gold``; for pairs ``chosen`` and ``rejected``. Every other column is kept
as metadata (``meta``), never interpreted.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from corpus.dataset import DATASET_FORMAT, DATASET_VERSION, KINDS, MANIFEST, RECORDS, DatasetInfo, dataset_info
from corpus.errors import FormatError
from corpus.images import DEFAULT_MAX_PIXELS, ImageRefused, LoadedImage, load_user_image
from corpus.store import FORMAT_VERSION, IMAGES_DIR
from corpus.tables import Row, read_table

DEFAULT_DOMAIN = "general"
RESERVED = ("id", "image", "question", "domain", "gold", "chosen", "rejected")
MAX_LISTED = 50


class DataImportError(FormatError):
    """The table has problems; nothing was written. ``problems`` lists each ``file:line: key: reason``."""

    def __init__(self, table: Path, problems: list[str]) -> None:
        shown = problems[:MAX_LISTED]
        more = f"\n... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        super().__init__(f"{len(problems)} problem(s) in {table}; nothing was written:\n" + "\n".join(shown) + more)
        self.problems = problems


def _text(row: Row, key: str, problems: list[str], *, required: bool) -> str | None:
    value = row.cells.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            problems.append(f"{row.where}: {key}: {'missing' if key not in row.cells else 'empty'}")
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        problems.append(f"{row.where}: {key}: expected text, got {type(value).__name__}")
        return None
    if not isinstance(value, str) and key in ("question", "chosen", "rejected", "image"):
        problems.append(f"{row.where}: {key}: expected text, got {type(value).__name__}")
        return None
    return str(value)


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


class _Importer:
    def __init__(self, table: Path, images: Path, tmp: Path, kind: str, max_pixels: int) -> None:
        self.table, self.images, self.tmp, self.kind, self.max_pixels = table, images, tmp, kind, max_pixels
        self.problems: list[str] = []
        self.loaded: dict[str, tuple[str, LoadedImage] | ImageRefused] = {}
        self.ids: dict[str, str] = {}
        self.domains: Counter[str] = Counter()

    def image(self, relative: str) -> tuple[str, LoadedImage] | ImageRefused:
        """The stored name and facts of one image file (each file is decoded once per import)."""
        if relative not in self.loaded:
            try:
                loaded = load_user_image(self.images, relative, max_pixels=self.max_pixels)
            except ImageRefused as exc:
                self.loaded[relative] = exc
                return exc
            name = f"{hashlib.sha256(loaded.png).hexdigest()}.png"
            target = self.tmp / IMAGES_DIR / name
            if not target.exists():
                _fsync_write(target, loaded.png)
            loaded.rgb.close()  # the pixels are on disk now; keep only the facts in memory
            self.loaded[relative] = (name, replace(loaded, png=b""))
        return self.loaded[relative]

    def record(self, row: Row, has_domain: bool) -> dict[str, Any] | None:
        before = len(self.problems)
        p = self.problems
        relative = _text(row, "image", p, required=True)
        question = _text(row, "question", p, required=True)
        domain = _text(row, "domain", p, required=True) if has_domain else DEFAULT_DOMAIN
        gold = _text(row, "gold", p, required=False)
        answers = {k: _text(row, k, p, required=True) for k in ("chosen", "rejected")} if self.kind == "pairs" else {}
        ident = _text(row, "id", p, required=True) if "id" in row.cells else f"{self.table.stem}-{row.line}"
        if ident is not None:
            if ident in self.ids:
                p.append(f"{row.where}: id: duplicate id {ident!r} (first at {self.ids[ident]})")
            else:
                self.ids[ident] = row.where
        stored = self.image(relative) if relative is not None else None
        if isinstance(stored, ImageRefused):
            p.append(f"{row.where}: image: {stored}")
        if len(p) > before or stored is None or isinstance(stored, ImageRefused):
            return None
        name, image = stored
        assert ident is not None and question is not None and domain is not None
        self.domains[domain.strip()] += 1
        record: dict[str, Any] = {
            "v": FORMAT_VERSION,
            "prompt": {"prompt_id": ident, "image": f"{IMAGES_DIR}/{name}", "question": question,
                       "domain": domain.strip(), "gold": gold, "facts": {}},
            "meta": {k: v for k, v in row.cells.items() if k not in RESERVED},
            "source": {"line": row.line, "image": relative, "image_sha256": image.original_sha256,
                       "image_mode": image.original_mode, "image_format": image.original_format,
                       "width": image.width, "height": image.height},
        }
        if self.kind == "pairs":
            record["chosen"], record["rejected"] = answers["chosen"], answers["rejected"]
        return record


def import_table(table: str | Path, images: str | Path, out: str | Path, *, kind: str = "prompts",
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> DatasetInfo:
    """Import ``table`` (CSV/JSONL/Parquet) with images under ``images`` into a new folder ``out``."""
    table, images, out = Path(table), Path(images), Path(out)
    if kind not in KINDS:
        raise FormatError(f"--kind {kind!r}: expected one of {KINDS}")
    if max_pixels < 1:
        raise FormatError(f"--max-pixels {max_pixels}: must be >= 1")
    if out.exists() or out.is_symlink():
        raise FormatError(f"{out}: already exists; choose a new --out (datasets are never overwritten in place)")
    if not out.parent.is_dir():
        raise FormatError(f"{out.parent}: no such folder for --out")
    if not images.is_dir():
        raise FormatError(f"{images}: --images is not a folder")
    rows = read_table(table)
    if not rows:
        raise DataImportError(table, [f"{table}:1: table has no rows"])
    columns = set().union(*(r.cells for r in rows))
    needed = ("image", "question") + (("chosen", "rejected") if kind == "pairs" else ())
    missing = [c for c in needed if c not in columns]
    if missing:
        raise DataImportError(table, [f"{table}:1: {c}: required column missing" for c in missing])
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.importing-", dir=out.parent))
    try:
        (tmp / IMAGES_DIR).mkdir()
        work = _Importer(table, images, tmp, kind, max_pixels)
        records = [work.record(row, "domain" in columns) for row in rows]
        if work.problems:
            raise DataImportError(table, work.problems)
        lines = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True, allow_nan=False) + "\n" for r in records)
        data = lines.encode("utf-8")
        _fsync_write(tmp / RECORDS[kind], data)
        manifest = {
            "format": DATASET_FORMAT, "version": DATASET_VERSION, "kind": kind, "count": len(records),
            "digest": hashlib.sha256(data).hexdigest(), "domains": dict(sorted(work.domains.items())),
            "images": len(list((tmp / IMAGES_DIR).iterdir())), "max_pixels": max_pixels,
            "source": {"table": table.name, "table_sha256": hashlib.sha256(table.read_bytes()).hexdigest()},
            "stored_images": "RGB PNG at original size; original file's SHA-256 in each record's source",
        }
        _fsync_write(tmp / MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dataset_info(out)
