"""``mor data check``: everything wrong with a dataset at once, plus what is in it.

Loading stops at the first bad record (a trainer must not run on a broken dataset); a person
fixing a dataset wants every problem in one pass. So each record is parsed on its own and
every problem is one ``file:line: key: reason`` line. Beyond format errors it flags what
loads fine but poisons training: duplicate ids, the same prompt (same image pixels and
question) imported twice, a pair whose chosen equals its rejected answer (no preference),
the same pair twice and two pairs that contradict each other.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from corpus.dataset import MANIFEST, RECORDS, read_manifest
from corpus.errors import CorpusError, FormatError
from corpus.store import parse_pair, parse_prompt, parse_record
from corpus.types import Prompt


@dataclass
class CheckReport:
    """Counts, image sizes and problems of one dataset."""

    path: Path
    kind: str = "pairs"
    count: int = 0
    digest: str = ""
    domains: Counter[str] = field(default_factory=Counter)
    sizes: Counter[tuple[int, int]] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        pixels = [w * h for (w, h) in self.sizes.elements()]
        return {
            "path": str(self.path), "kind": self.kind, "records": self.count, "sha256": self.digest,
            "domains": dict(sorted(self.domains.items())),
            "image_sizes": {f"{w}x{h}": n for (w, h), n in self.sizes.most_common(10)},
            "smallest_image_pixels": min(pixels, default=0), "largest_image_pixels": max(pixels, default=0),
            "problems": len(self.problems),
        }


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


def _prompt_key(prompt: Prompt, images: dict[int, str]) -> tuple[str, str]:
    key = id(prompt.image)
    if key not in images:
        images[key] = hashlib.sha256(prompt.image.tobytes()).hexdigest()
    return images[key], _norm(prompt.question)


def check_dataset(path: str | Path) -> CheckReport:
    """Every problem of the dataset at ``path``; raises only if it is not a dataset at all."""
    path = Path(path)
    report = CheckReport(path)
    manifest = read_manifest(path)
    report.kind = manifest["kind"] if manifest else "pairs"
    file = path / RECORDS[report.kind]
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise FormatError(f"{file}: cannot read: {exc.strerror}") from None
    report.digest = hashlib.sha256(data).hexdigest()
    if manifest and manifest["digest"] != report.digest:
        report.problems.append(f"{path / MANIFEST}:1: digest: differs from {file.name} (altered after import?)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = data.count(b"\n", 0, exc.start) + 1
        report.problems.append(f"{file}:{bad}: not UTF-8 text ({exc.reason} at byte {exc.start})")
        return report
    cache: dict[str, Image.Image] = {}
    images: dict[int, str] = {}
    ids: dict[str, tuple[str, tuple[str, str]]] = {}
    prompts: dict[tuple[str, str], str] = {}
    pairs: dict[tuple[str, str, str, str], str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{file}:{number}"
        try:
            record = parse_record(line, where)
            if report.kind == "pairs":
                pair = parse_pair(record, where, path, cache)
                prompt = pair.prompt
            else:
                prompt = parse_prompt(record, where, path, cache)
        except CorpusError as exc:
            report.problems.append(str(exc))
            continue
        report.count += 1
        report.domains[prompt.domain] += 1
        report.sizes[prompt.image.size] += 1
        key = _prompt_key(prompt, images)
        if not prompt.question.strip():
            report.problems.append(f"{where}: prompt.question: empty question")
        first = ids.get(prompt.prompt_id)
        if first is None:
            ids[prompt.prompt_id] = (where, key)
        elif report.kind == "prompts" or first[1] != key:
            report.problems.append(f"{where}: prompt.prompt_id: duplicate id {prompt.prompt_id!r} "
                                   f"(first at line {first[0].rsplit(':', 1)[1]})")
        if report.kind == "prompts":
            if key in prompts:
                report.problems.append(f"{where}: prompt.question: duplicate prompt (same image and question as "
                                       f"line {prompts[key]})")
            prompts.setdefault(key, str(number))
            continue
        chosen, rejected = _norm(pair.chosen), _norm(pair.rejected)
        if chosen == rejected:
            report.problems.append(f"{where}: rejected: equals chosen (a pair with no preference)")
            continue
        same, flipped = (*key, chosen, rejected), (*key, rejected, chosen)
        if same in pairs:
            report.problems.append(f"{where}: chosen: duplicate pair (same as line {pairs[same]})")
        elif flipped in pairs:
            report.problems.append(f"{where}: chosen: contradicts line {pairs[flipped]} (chosen and rejected swapped)")
        pairs.setdefault(same, str(number))
    records = sum(1 for ln in text.splitlines() if ln.strip())
    if manifest and manifest["count"] != records:
        report.problems.append(f"{path / MANIFEST}:1: count: says {manifest['count']} records, {file.name} "
                               f"holds {records}")
    return report
