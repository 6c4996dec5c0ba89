"""``mor audit report``: verify every log, reconcile every receipt, write report.html + report.json.

Exit codes: 0 when the verdict passes, 1 when it fails (a log fails verification, a receipt does
not reconcile, or what the logs record exceeds the policy; the report is written either way and
says why, in red), 2 for unusable input (no such directory, unreadable key or policy, an ``--out``
that holds a report already).
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

from mor_cli.errors import CommandError

FILES = ("report.html", "report.json")


def register(actions: Any) -> None:
    report = actions.add_parser("report", help="verify every log, reconcile every receipt, and write one "
                                               "self-contained HTML report (+ JSON) an auditor can file")
    report.add_argument("--server-log", required=True, help="the server's audit log directory (e.g. from "
                                                            "`mor audit fetch`)")
    report.add_argument("--agent-log", action="append", default=[], metavar="DIR",
                        help="a member agent's audit log directory (repeatable)")
    report.add_argument("--keyholder-log", help="the key holder's audit log directory (fused-only)")
    report.add_argument("--ca-log", help="the consortium CA's audit log (CA_DIR/audit): revocations")
    report.add_argument("--policy", help="the consortium policy file: budgets and allowed decryptions are judged "
                                         "against it, and its digest must be the one in force")
    report.add_argument("--server-key", help="the server log's public key (PEM), obtained out of band")
    report.add_argument("--keyholder-key", help="the key holder log's public key (PEM), obtained out of band")
    report.add_argument("--ca-key", help="the CA log's public key (PEM), obtained out of band")
    report.add_argument("--agent-key", action="append", default=[], metavar="PEM",
                        help="an agent log's public key obtained out of band (repeatable; matched to logs by key)")
    report.add_argument("--out", required=True, help="directory for report.html and report.json")


def _key(path: str | None) -> Any:
    from crypto.errors import CryptoError
    from crypto.signing import VerifyKey

    if path is None:
        return None
    try:
        return VerifyKey.load(path)
    except (CryptoError, OSError) as exc:
        raise CommandError(f"{path}: cannot load public key: {exc}") from None


def _policy(path: str | None) -> Any:
    from audit.report import PolicyTerms
    from policies import PolicyError, load_policy

    if path is None:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a pilot policy's flags go into the report instead
            policy = load_policy(path)
    except PolicyError as exc:
        raise CommandError(str(exc)) from None
    return PolicyTerms(source=path, digest=policy.digest(), mode=policy.privacy.mode,
                       max_epsilon=policy.privacy.max_epsilon, lifetime_epsilon=policy.privacy.lifetime_epsilon,
                       public_rounds_per_agent=policy.privacy.public_rounds_per_agent,
                       insecure=policy.insecure_reasons())


def _agent_inputs(dirs: list[str], key_paths: list[str]) -> list[Any]:
    from audit.report import LogInput
    from audit.storage import PUBLIC_KEY
    from crypto.signing import VerifyKey

    keys = {k.fingerprint(): k for k in (_key(p) for p in key_paths)}
    inputs = []
    for directory in dirs:
        stored = Path(directory) / PUBLIC_KEY
        try:
            fingerprint = VerifyKey.load(stored).fingerprint() if stored.exists() else None
        except Exception:  # an unreadable key file is the verifier's finding, not a usage error
            fingerprint = None
        inputs.append(LogInput("agent", Path(directory), keys.get(fingerprint or "")))
    return inputs


def report(args: argparse.Namespace) -> int:
    from audit.errors import AuditError
    from audit.report import LogInput, build_report, render_report

    out = Path(args.out)
    if any((out / name).exists() for name in FILES):
        raise CommandError(f"--out {out}: already holds a report; choose a new directory")
    try:
        result = build_report(
            LogInput("server", Path(args.server_log), _key(args.server_key)),
            _agent_inputs(args.agent_log, args.agent_key),
            keyholder=LogInput("keyholder", Path(args.keyholder_log), _key(args.keyholder_key))
            if args.keyholder_log else None,
            ca=LogInput("ca", Path(args.ca_log), _key(args.ca_key)) if args.ca_log else None,
            policy=_policy(args.policy), now=time.time())
    except AuditError as exc:
        raise CommandError(str(exc)) from None
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    (out / "report.json").write_text(json.dumps(result, indent=2, sort_keys=True, default=sorted) + "\n", "utf-8")
    (out / "report.html").write_text(render_report(result), "utf-8")
    for name in FILES:
        os.chmod(out / name, 0o600)
    verdict = result["verdict"]
    print(f"report: {(out / 'report.html').resolve()} (+ report.json)")
    print(f"logs {len(result['logs'])}, receipts {result['receipts']['checked']} checked, "
          f"{result['receipts']['failed']} failed; flags {len(result['flags'])}")
    if verdict["ok"]:
        print("PASS: every log verifies, every receipt reconciles, nothing exceeds the policy")
        return 0
    print(f"FAIL ({len(verdict['failures'])}): {verdict['failures'][0]}")
    return 1
