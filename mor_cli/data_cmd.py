"""``mor data``: turn a member's own table and images into a dataset, check it, look at it.

    mor data import --table FILE --images DIR --out DATASET [--kind prompts|pairs] [--max-pixels N]
    mor data check DATASET [--json]      counts, image sizes, every problem as file:line: key: reason
    mor data show DATASET [--n 5]        the first records, as a person would read them

Any problem the user can fix is reported without a traceback and exits with status 2
(``check`` exits 2 when it finds a problem, after listing them all).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from mor_cli.errors import CommandError


def _guarded(action: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from corpus.errors import CorpusError

        try:
            return action(args)
        except CorpusError as exc:
            raise CommandError(str(exc)) from None

    return run


def register(subparsers: Any) -> None:
    from corpus.images import DEFAULT_MAX_PIXELS

    parser = subparsers.add_parser("data", help="import, check and show datasets made from your own files")
    actions = parser.add_subparsers(dest="data_action", required=True, metavar="ACTION")
    imp = actions.add_parser("import", help="a CSV/JSONL/Parquet table + an image folder -> a dataset folder")
    imp.add_argument("--table", required=True, help="CSV, JSONL or Parquet: image, question[, id, domain, gold]"
                                                     "[, chosen, rejected]; other columns kept as metadata")
    imp.add_argument("--images", required=True, help="folder the table's image paths are relative to")
    imp.add_argument("--out", required=True, help="the dataset folder to create (must not exist)")
    imp.add_argument("--kind", choices=("prompts", "pairs"), default="prompts",
                     help="prompts (server: GRPO prompts, calibration) or pairs (a member's preference pairs)")
    imp.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                     help=f"refuse images with more pixels (default {DEFAULT_MAX_PIXELS})")
    imp.set_defaults(func=_guarded(_import))
    check = actions.add_parser("check", help="counts per domain, image sizes, and every problem (exit 2 if any)")
    check.add_argument("dataset")
    check.add_argument("--json", action="store_true", help="print the summary and problems as JSON")
    check.set_defaults(func=_guarded(_check))
    show = actions.add_parser("show", help="print the first records")
    show.add_argument("dataset")
    show.add_argument("--n", type=int, default=5, help="how many records (default 5)")
    show.set_defaults(func=_guarded(_show))


def _import(args: argparse.Namespace) -> int:
    from corpus.importer import import_table

    started = time.monotonic()
    info = import_table(args.table, args.images, args.out, kind=args.kind, max_pixels=args.max_pixels)
    domains = ", ".join(f"{d} {n}" for d, n in info.domains.items())
    print(f"{info.path}: {info.count} {info.kind} ({domains}); sha256 {info.digest}; "
          f"{time.monotonic() - started:.1f} s")
    return 0


def _check(args: argparse.Namespace) -> int:
    from corpus.checks import check_dataset

    report = check_dataset(args.dataset)
    summary = report.summary()
    if args.json:
        print(json.dumps({**summary, "problems": report.problems}, indent=2))
    else:
        print(f"{summary['path']}: {summary['records']} {summary['kind']} records, sha256 {summary['sha256']}")
        print("domains: " + (", ".join(f"{d} {n}" for d, n in summary["domains"].items()) or "-"))
        print("image sizes: " + (", ".join(f"{s} ({n})" for s, n in summary["image_sizes"].items()) or "-"))
        for problem in report.problems:
            print(problem)
        print(f"{len(report.problems)} problem(s)", file=sys.stderr)
    return 2 if report.problems else 0


def _show(args: argparse.Namespace) -> int:
    from corpus.dataset import RECORDS, read_manifest
    from corpus.store import parse_record

    if args.n < 0:
        raise CommandError("--n must be >= 0")
    manifest = read_manifest(args.dataset)
    kind = manifest["kind"] if manifest else "pairs"
    file = f"{args.dataset}/{RECORDS[kind]}"
    shown = 0
    try:
        with open(file, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if shown >= args.n:
                    break
                if not line.strip():
                    continue
                record = parse_record(line, f"{file}:{number}")
                print(_render(record, f"{file}:{number}"))
                shown += 1
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"{file}: cannot read: {exc}") from None
    return 0


def _render(record: dict[str, Any], where: str) -> str:
    prompt = record.get("prompt") or {}
    source = record.get("source") or {}
    size = f" {source['width']}x{source['height']}" if "width" in source else ""
    origin = f" from {source['image']} (sha256 {source['image_sha256'][:12]}…)" if "image_sha256" in source else ""
    lines = [f"[{prompt.get('prompt_id')}] {where}  domain={prompt.get('domain')}",
             f"  image:    {prompt.get('image')}{size}{origin}",
             f"  question: {prompt.get('question')}"]
    if prompt.get("gold") is not None:
        lines.append(f"  gold:     {prompt['gold']}")
    for key in ("chosen", "rejected"):
        if key in record:
            lines.append(f"  {key + ':':<9} {record[key]}")
    if record.get("meta"):
        lines.append(f"  meta:     {json.dumps(record['meta'], ensure_ascii=False, sort_keys=True)}")
    return "\n".join(lines)
