"""On-disk preference pairs: ``DIR/pairs.jsonl`` + ``DIR/images/<sha256>.png``.

Format (version 1; also in ``corpus/FORMAT.md``): one JSON object per line, UTF-8::

    {"v": 1,
     "prompt": {"prompt_id": str, "image": "images/<sha256 of the PNG bytes>.png",
                "question": str, "domain": str (any non-empty name),
                "gold": str | null, "facts": {...}},
     "chosen": str, "rejected": str, "meta": {...}}

Images are content-addressed, so a prompt shared by many pairs is stored once, and the file
name is a checksum: a loaded image whose bytes do not hash to its name is refused. Blank
lines are ignored. Every loading error names ``file:line`` and the offending key; a missing
or unreadable image names the image file. Saving writes to a temporary file and renames it,
so a crash never leaves a half-written ``pairs.jsonl``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from corpus.errors import CorpusError, FormatError, MissingImageError
from corpus.types import PreferencePair, Prompt

FORMAT_VERSION = 1
PAIRS_FILE = "pairs.jsonl"
IMAGES_DIR = "images"


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def save_pairs(pairs: Sequence[PreferencePair], directory: Path) -> None:
    """Write ``pairs`` under ``directory`` (created if needed; an existing pairs.jsonl is replaced)."""
    directory = Path(directory)
    (directory / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    names: dict[int, str] = {}  # id(image) -> relative path, so shared prompts encode once
    lines = []
    for pair in pairs:
        prompt = pair.prompt
        key = id(prompt.image)
        if key not in names:
            data = _png(prompt.image)
            relative = f"{IMAGES_DIR}/{hashlib.sha256(data).hexdigest()}.png"
            target = directory / relative
            if not target.exists():
                target.write_bytes(data)
            names[key] = relative
        record = {
            "v": FORMAT_VERSION,
            "prompt": {"prompt_id": prompt.prompt_id, "image": names[key], "question": prompt.question,
                       "domain": prompt.domain, "gold": prompt.gold, "facts": prompt.facts},
            "chosen": pair.chosen, "rejected": pair.rejected, "meta": pair.meta,
        }
        lines.append(json.dumps(record, ensure_ascii=False, sort_keys=True, allow_nan=False))
    tmp = directory / f".{PAIRS_FILE}.tmp"
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    os.replace(tmp, directory / PAIRS_FILE)


def _field(record: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in record:
        raise FormatError(f"{where}: key {key!r}: missing")
    value = record[key]
    if not isinstance(value, kind):
        raise FormatError(f"{where}: key {key!r}: expected {_name(kind)}, got {type(value).__name__}")
    return value


def _name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join("null" if k is type(None) else k.__name__ for k in kinds)


def _load_image(directory: Path, relative: str, where: str, cache: dict[str, Image.Image]) -> Image.Image:
    if relative in cache:
        return cache[relative]
    path = directory / relative
    if Path(relative).is_absolute() or ".." in Path(relative).parts or Path(relative).parent.name != IMAGES_DIR:
        raise FormatError(f"{where}: key 'prompt.image': {relative!r} is not a path under {IMAGES_DIR}/")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MissingImageError(f"{path}: image referenced at {where} cannot be read: {exc.strerror}") from None
    if hashlib.sha256(data).hexdigest() != Path(relative).stem:
        raise MissingImageError(f"{path}: image referenced at {where} does not match its checksum name")
    try:
        with Image.open(io.BytesIO(data)) as img:
            image = img.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise MissingImageError(f"{path}: image referenced at {where} is not a readable PNG: {exc}") from None
    cache[relative] = image
    return image


def json_object(line: str, where: str) -> dict[str, Any]:
    """One JSON line that must hold an object; a :class:`FormatError` naming ``where`` otherwise."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise FormatError(f"{where}: invalid JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(record, dict):
        raise FormatError(f"{where}: expected a JSON object, got {type(record).__name__}")
    return record


def parse_record(line: str, where: str) -> dict[str, Any]:
    """One JSON line as a version-1 record (a dict with ``v == 1``), else :class:`FormatError`."""
    record = json_object(line, where)
    version = _field(record, "v", int, where)
    if version != FORMAT_VERSION:
        raise FormatError(f"{where}: key 'v': unsupported format version {version}")
    return dict(record)


def parse_prompt(record: dict[str, Any], where: str, directory: Path, cache: dict[str, Image.Image]) -> Prompt:
    """The ``prompt`` object of a record, its image loaded and checked against its checksum name."""
    raw = _field(record, "prompt", dict, where)
    p = f"{where}: prompt"
    image = _load_image(directory, _field(raw, "image", str, p), where, cache)
    try:
        return Prompt(
            prompt_id=_field(raw, "prompt_id", str, p), image=image, question=_field(raw, "question", str, p),
            domain=_field(raw, "domain", str, p), gold=_field(raw, "gold", (str, type(None)), p),
            facts=_field(raw, "facts", dict, p),
        )
    except FormatError:
        raise
    except CorpusError as exc:
        raise FormatError(f"{where}: {exc}") from None


def parse_pair(record: dict[str, Any], where: str, directory: Path, cache: dict[str, Image.Image]) -> PreferencePair:
    prompt = parse_prompt(record, where, directory, cache)
    try:
        return PreferencePair(prompt, _field(record, "chosen", str, where), _field(record, "rejected", str, where),
                              _field(record, "meta", dict, where))
    except FormatError:
        raise
    except CorpusError as exc:
        raise FormatError(f"{where}: {exc}") from None


def _parse(line: str, where: str, directory: Path, cache: dict[str, Image.Image]) -> PreferencePair:
    return parse_pair(parse_record(line, where), where, directory, cache)


def load_pairs(directory: Path) -> list[PreferencePair]:
    """Read pairs written by :func:`save_pairs`; raise :class:`FormatError` / :class:`MissingImageError`."""
    path = Path(directory) / PAIRS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FormatError(f"{path}: not found") from None
    except UnicodeDecodeError as exc:
        raise FormatError(f"{path}: not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    cache: dict[str, Image.Image] = {}
    return [
        _parse(line, f"{path}:{number}", Path(directory), cache)
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip()
    ]
