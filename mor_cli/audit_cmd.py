"""``mor audit``: verify an audit log against a public key, or show its entries.

``verify`` exits 0 when every check passes, 1 when the log fails verification (naming the
first bad entry: file, line, index, reason), 2 on usage errors (no such directory, bad key).
Entries no signed checkpoint covers fail it unless ``--allow-unsealed-tail`` says the log is
still being written.
``show`` does not verify: it prints what the lines say, for people; trust comes from ``verify``.
``report`` verifies and reconciles every log and writes an HTML + JSON report
(:mod:`mor_cli.audit_report`, :mod:`audit.report`).
``fetch`` downloads a verifiable copy of a running server's log with an auditor certificate
(:mod:`mor_cli.audit_fetch`); it exits 1 and keeps nothing at ``--out`` if the copy fails.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mor_cli import audit_fetch, audit_report
from mor_cli.main import CommandError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("audit", help="verify or inspect a tamper-evident audit log")
    actions = parser.add_subparsers(dest="audit_action", required=True, metavar="ACTION")

    verify = actions.add_parser("verify", help="check every entry, the Merkle tree and every signed checkpoint")
    verify.add_argument("log_dir", metavar="LOG_DIR", help="audit log directory")
    verify.add_argument("--public-key", required=True, help="the log writer's Ed25519 public key (PEM), "
                        "obtained out of band (the log's own copy is never trusted)")
    verify.add_argument("--allow-unsealed-tail", action="store_true",
                        help="accept entries no signed checkpoint covers yet (a log still being written); "
                        "by default they fail verification")
    verify.add_argument("--quiet", action="store_true", help="no progress bar")

    audit_fetch.register(actions)
    audit_report.register(actions)

    show = actions.add_parser("show", help="print entries readably (unverified: run verify for trust)")
    show.add_argument("log_dir", metavar="LOG_DIR", help="audit log directory")
    show.add_argument("--actor", help="only entries by this identity")
    show.add_argument("--action", help="only this action (e.g. submission.accepted)")
    show.add_argument("--round", dest="round_id", help="only this round id")
    show.add_argument("--json", action="store_true", help="one JSON entry per line")

    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from audit.errors import AuditError
    from crypto.errors import CryptoError

    try:
        if args.audit_action == "fetch":
            return audit_fetch.fetch(args)
        if args.audit_action == "report":
            return audit_report.report(args)
        return _verify(args) if args.audit_action == "verify" else _show(args)
    except (AuditError, CryptoError) as exc:
        raise CommandError(str(exc)) from None


def _when(t: Any) -> str:
    if not isinstance(t, int | float) or isinstance(t, bool):
        return "-" if t is None else str(t)
    try:  # show reads unverified lines: a time past year 9999 (or inf) is printed as it stands
        return datetime.fromtimestamp(t, tz=UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    except (OverflowError, ValueError, OSError):
        return repr(t)


def _verify(args: argparse.Namespace) -> int:
    from audit.verify import verify_log

    report = verify_log(Path(args.log_dir), Path(args.public_key), progress=not args.quiet,
                        allow_unsealed_tail=args.allow_unsealed_tail)
    print(f"log          {report.directory}  origin {report.origin or '-'}")
    print(f"entries      {report.entries}  (verified prefix)")
    print(f"checkpoints  {report.checkpoints}  (signatures valid)")
    print(f"time span    {_when(report.first_time)} .. {_when(report.last_time)}")
    if report.uncovered and args.allow_unsealed_tail:
        print(f"note         {report.uncovered} entries after the last signed checkpoint, accepted as asked "
              "(--allow-unsealed-tail: nothing proves they were not cut or rewritten)")
    print("actions by identity:")
    for actor, actions in sorted(report.actions_by_actor.items()):
        listed = ", ".join(f"{action}={count}" for action, count in sorted(actions.items()))
        print(f"  {actor}: {listed}")
    if report.ok:
        print("OK: every entry, checkpoint signature and root verifies")
        return 0
    print(f"FAILED: {report.first_problem}", file=sys.stderr)
    for problem in report.problems[1:]:
        print(f"  also: {problem}", file=sys.stderr)
    return 1


def _show(args: argparse.Namespace) -> int:
    path = Path(args.log_dir) / "entries.jsonl"
    if not path.exists():
        raise CommandError(f"{path}: no such file (not an audit log directory?)")
    with path.open("rb") as handle:
        for lineno, raw in enumerate(handle, 1):
            try:
                entry = json.loads(raw)["entry"]
            except (ValueError, KeyError, TypeError, RecursionError):
                print(f"{path} line {lineno}: unreadable (run `mor audit verify`)", file=sys.stderr)
                continue
            if not isinstance(entry, dict) or not _wanted(entry, args):
                continue
            print(json.dumps(entry, sort_keys=True) if args.json else _readable(entry))
    return 0


def _wanted(entry: dict[str, Any], args: argparse.Namespace) -> bool:
    return ((args.actor is None or entry.get("actor") == args.actor)
            and (args.action is None or entry.get("action") == args.action)
            and (args.round_id is None or entry.get("round_id") == args.round_id))


def _readable(entry: dict[str, Any]) -> str:
    parts = [f"#{entry.get('index')}", _when(entry.get("time")), str(entry.get("actor")), str(entry.get("action")),
             str(entry.get("outcome"))]
    for name in ("round_id", "task_id"):
        if entry.get(name) is not None:
            parts.append(f"{name.removesuffix('_id')}={entry[name]}")
    digests = entry.get("digests")
    for name, digest in sorted(digests.items() if isinstance(digests, dict) else []):
        parts.append(f"{name}={str(digest)[:16]}…")
    if entry.get("details"):
        parts.append(json.dumps(entry["details"], sort_keys=True, separators=(",", ":")))
    return "  ".join(parts)
