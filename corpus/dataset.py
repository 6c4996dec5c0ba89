"""Datasets on disk and the loader API every consumer (agents, server, ``mor data``) uses.

A dataset is a folder. Two layouts load:

* **mor-dataset v1** (written by ``mor data import``)::

      DATASET/dataset.json          manifest: kind, count, digest, domains, source table
      DATASET/prompts.jsonl | pairs.jsonl   one record per line (corpus/FORMAT.md, plus
                                    ``meta`` = the table's extra columns and ``source`` =
                                    table line, original image path, its SHA-256 and mode)
      DATASET/images/<sha256>.png   RGB PNGs at their original size, content-addressed

* **the original pairs layout** (``pairs.jsonl`` + ``images/`` with no manifest, as written by
  :func:`corpus.store.save_pairs`), which keeps loading unchanged as a pairs dataset.

The **digest** is the SHA-256 of the records file. Because each record names its image by
the SHA-256 of its bytes (checked on load), the digest pins every text *and* every pixel: it
is what an audit log should record about "what this was trained or aligned on". The manifest
repeats it so a tampered records file is refused rather than loaded.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from corpus.errors import FormatError
from corpus.store import PAIRS_FILE, parse_pair, parse_prompt, parse_record
from corpus.types import PreferencePair, Prompt

MANIFEST = "dataset.json"
PROMPTS_FILE = "prompts.jsonl"
DATASET_FORMAT = "mor-dataset"
DATASET_VERSION = 1
KINDS = ("prompts", "pairs")
RECORDS = {"prompts": PROMPTS_FILE, "pairs": PAIRS_FILE}


@dataclass(frozen=True)
class DatasetInfo:
    """What an auditor needs to say what a dataset was: kind, size, digest, domains."""

    path: Path
    kind: str
    layout: str  # "mor-dataset/1" or "pairs.jsonl/1" (the original, manifest-less layout)
    count: int
    digest: str
    domains: dict[str, int]
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def records_path(self) -> Path:
        return self.path / RECORDS[self.kind]

    def summary(self) -> dict[str, Any]:
        """JSON-able: what to put in an audit entry (e.g. ``data.loaded``) or a report."""
        return {"path": str(self.path), "kind": self.kind, "layout": self.layout, "count": self.count,
                "sha256": self.digest, "domains": dict(self.domains)}


@dataclass(frozen=True)
class PromptDataset:
    """Prompts plus their info; ``meta[prompt_id]`` holds the table's extra columns."""

    info: DatasetInfo
    prompts: list[Prompt]
    meta: dict[str, dict[str, Any]]

    def __len__(self) -> int:
        return len(self.prompts)

    def __iter__(self) -> Iterator[Prompt]:
        return iter(self.prompts)


@dataclass(frozen=True)
class PairDataset:
    """Preference pairs plus their info (extra columns are in each pair's ``meta``)."""

    info: DatasetInfo
    pairs: list[PreferencePair]

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Iterator[PreferencePair]:
        return iter(self.pairs)


def read_manifest(path: Path) -> dict[str, Any] | None:
    """The folder's ``dataset.json`` (validated), or ``None`` for the original pairs layout."""
    file = Path(path) / MANIFEST
    if not file.exists():
        if not Path(path).is_dir():
            raise FormatError(f"{path}: no such dataset folder")
        if not (Path(path) / PAIRS_FILE).exists():
            raise FormatError(f"{path}: not a dataset (neither {MANIFEST} nor {PAIRS_FILE}; "
                              "make one with `mor data import`)")
        return None
    try:
        manifest = json.loads(file.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{file}:1: unreadable manifest: {exc}") from None
    if not isinstance(manifest, dict):
        raise FormatError(f"{file}:1: expected a JSON object")
    if manifest.get("format") != DATASET_FORMAT or manifest.get("version") != DATASET_VERSION:
        raise FormatError(f"{file}:1: format: expected {DATASET_FORMAT!r} version {DATASET_VERSION}, got "
                          f"{manifest.get('format')!r} version {manifest.get('version')!r}")
    if manifest.get("kind") not in KINDS:
        raise FormatError(f"{file}:1: kind: expected one of {KINDS}, got {manifest.get('kind')!r}")
    for key in ("count", "digest"):
        if key not in manifest:
            raise FormatError(f"{file}:1: {key}: missing")
    return dict(manifest)


def _records(path: Path) -> tuple[dict[str, Any] | None, str, bytes]:
    manifest = read_manifest(path)
    kind = manifest["kind"] if manifest else "pairs"
    file = path / RECORDS[kind]
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise FormatError(f"{file}: cannot read: {exc.strerror}") from None
    if manifest and hashlib.sha256(data).hexdigest() != manifest["digest"]:
        raise FormatError(f"{file}: digest differs from {MANIFEST} (records altered after import?)")
    return manifest, kind, data


def _lines(file: Path, data: bytes) -> Iterator[tuple[str, str]]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(f"{file}: not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield f"{file}:{number}", line


def _info(path: Path, manifest: dict[str, Any] | None, kind: str, data: bytes, domains: Counter[str]) -> DatasetInfo:
    layout = f"{DATASET_FORMAT}/{DATASET_VERSION}" if manifest else f"{PAIRS_FILE}/1"
    return DatasetInfo(path=path, kind=kind, layout=layout, count=sum(domains.values()),
                       digest=hashlib.sha256(data).hexdigest(), domains=dict(sorted(domains.items())),
                       manifest=manifest or {})


def _expect(path: Path, kind: str, wanted: str) -> None:
    if kind != wanted:
        hint = "load_pair_dataset" if kind == "pairs" else "load_prompt_dataset"
        raise FormatError(f"{path}: is a {kind} dataset, not {wanted} (use {hint}, or import with --kind {wanted})")


def load_prompt_dataset(path: str | Path) -> PromptDataset:
    """Every prompt of a ``--kind prompts`` dataset, images loaded and checked."""
    path = Path(path)
    manifest, kind, data = _records(path)
    _expect(path, kind, "prompts")
    cache: dict[str, Image.Image] = {}
    prompts, meta, domains = [], {}, Counter[str]()
    for where, line in _lines(path / PROMPTS_FILE, data):
        record = parse_record(line, where)
        prompt = parse_prompt(record, where, path, cache)
        prompts.append(prompt)
        meta[prompt.prompt_id] = dict(record.get("meta") or {})
        domains[prompt.domain] += 1
    return PromptDataset(_info(path, manifest, kind, data, domains), prompts, meta)


def load_pair_dataset(path: str | Path) -> PairDataset:
    """Every pair of a pairs dataset (either layout), images loaded and checked."""
    path = Path(path)
    manifest, kind, data = _records(path)
    _expect(path, kind, "pairs")
    cache: dict[str, Image.Image] = {}
    pairs, domains = [], Counter[str]()
    for where, line in _lines(path / PAIRS_FILE, data):
        pair = parse_pair(parse_record(line, where), where, path, cache)
        pairs.append(pair)
        domains[pair.prompt.domain] += 1
    return PairDataset(_info(path, manifest, kind, data, domains), pairs)


def dataset_info(path: str | Path) -> DatasetInfo:
    """Kind, size, digest and domains without decoding any image (cheap: for status pages)."""
    path = Path(path)
    manifest, kind, data = _records(path)
    domains: Counter[str] = Counter()
    for where, line in _lines(path / RECORDS[kind], data):
        prompt = parse_record(line, where).get("prompt")
        domains[str(prompt.get("domain")) if isinstance(prompt, dict) else "?"] += 1
    return _info(path, manifest, kind, data, domains)
