"""``mor bench``: measure what privacy costs, as ratios to baselines timed in the same run.

    mor bench                              every section, 3 repeats, results in bench-out/
    mor bench --sections 2,3 --repeats 5   only CKKS and DP, 5 repeats
    mor bench --smoke                      the tiny configuration (what the test suite runs)
    mor bench --sections 1 --compare-polling   section 1 plus the poll-interval before/after
    mor bench --sections 4 --compare-http      section 4: binary envelopes over h11 against httptools

Prints one Markdown table and writes ``OUT/bench.json`` (machine, date, command, figures,
"nothing lost" checks). Exit status 1 if a section failed (its error is in the JSON).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from mor_cli.errors import CommandError

DEFAULT_REPEATS = 3
MAX_REPEATS = 50


def _sections(text: str) -> list[int]:
    try:
        numbers = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sections {text!r}: expected numbers like 2,3,6") from None
    if not numbers or any(not 1 <= n <= 6 for n in numbers):
        raise argparse.ArgumentTypeError(f"--sections {text!r}: each section is 1..6")
    return numbers


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("bench", help="benchmark the cost of privacy (ratios to in-run baselines)")
    parser.add_argument("--sections", type=_sections, default=[1, 2, 3, 4, 5, 6],
                        help="comma-separated sections: 1 exchange, 2 ckks, 3 dp, 4 ingest, 5 scaling, 6 grpo "
                             "(default: all)")
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS,
                        help=f"paired repeats per figure (default {DEFAULT_REPEATS})")
    parser.add_argument("--smoke", action="store_true", help="tiny configuration: checks the benchmark still works")
    parser.add_argument("--compare-polling", action="store_true",
                        help="section 1: also run the ckks round with the coordinator's old 0.1 s poll (before/after)")
    parser.add_argument("--compare-http", action="store_true",
                        help="section 4: compare the binary transport over the h11 and the httptools HTTP parser "
                             "instead of the JSON and the binary transport")
    parser.add_argument("--out", type=Path, default=Path("bench-out"), help="directory for bench.json")
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    if not 1 <= args.repeats <= MAX_REPEATS:
        raise CommandError(f"--repeats {args.repeats}: must be 1..{MAX_REPEATS}")
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(name, "1")  # nothing may reach a hub, ever
    from sim.bench import run_bench

    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CommandError(f"--out {args.out}: cannot create: {exc.strerror}") from None
    command = "mor " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["bench"] else \
        f"mor bench --sections {','.join(map(str, args.sections))} --repeats {args.repeats}" + \
        (" --smoke" if args.smoke else "") + (" --compare-polling" if args.compare_polling else "") + \
        (" --compare-http" if args.compare_http else "")
    report = run_bench(args.sections, repeats=args.repeats, smoke=args.smoke, out_dir=args.out, command=command,
                       compare_polling=args.compare_polling, compare_http=args.compare_http)
    print(report.table())
    for section, checks in report.checks.items():
        print(f"section {section} checks: {checks}")
    for section, error in report.failed.items():
        print(f"mor bench: section {section} failed: {error.splitlines()[0]}", file=sys.stderr)
    print(f"results: {args.out / 'bench.json'}")
    return 1 if report.failed else 0
