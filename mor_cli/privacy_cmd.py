"""``mor privacy``: a member's own empirical check of its DP claim, run where its data is.

    mor privacy audit --config agent.toml [--canaries 256] [--shadows 4] [--confidence 0.95]
                      [--no-contrast] [--contrast-epochs N] [--out FILE] [--quiet]

Trains the member's reward model the way ``mor client train`` does, with canary pairs, plus
shadow models and a non-private contrast; attacks them through their scores; prints TPR at 1%
and 0.1% FPR, the empirical ε lower bound and the claimed ε (method: docs/privacy-audit.md).
Writes ``<state_dir>/privacy-audit.json`` (or ``--out``) and a ``privacy.audit`` entry in the
agent's audit log. Exit 0: the claim holds; 1: an attack shows more than the claimed ε;
2: the audit could not run (one line on stderr). The member's model and report are untouched.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from mor_cli.client_cmd import _guarded
from mor_cli.main import CommandError


def _audit(args: argparse.Namespace) -> int:
    from audit.errors import LogLockedError
    from client_agent.agent import open_agent_audit
    from client_agent.config import load_agent_config
    from client_agent.privacy_audit import AuditSettings, run_audit
    from client_agent.privacy_audit import report as audit_report
    from crypto.signing import SigningKey

    config = load_agent_config(args.config)
    settings = AuditSettings(canaries=args.canaries, shadows=args.shadows, confidence=args.confidence,
                             contrast=not args.no_contrast, contrast_epochs=args.contrast_epochs,
                             progress=not args.quiet)
    settings.check()  # before any work
    identity = config.identity()
    outcome = run_audit(config, settings, say=lambda line: print(line, file=sys.stderr, flush=True))
    print(audit_report.render(outcome), flush=True)
    document = audit_report.results(outcome, agent_id=identity, arch=config.model.arch,
                                    params=dict(config.model.params))
    out = args.out or config.agent.state_dir / "privacy-audit.json"
    digest = audit_report.write_json(document, out)
    print(f"results: {out}")
    key = SigningKey.load_or_create(config.signing_key_path)
    try:
        with open_agent_audit(config.audit_dir, key, origin=identity, policy=config.consortium_policy()) as log:
            log.append(actor=identity, action=audit_report.ACTION, outcome="ok" if outcome.claim_holds else "failed",
                       digests={"results_sha256": digest}, details=audit_report.log_entry(outcome, document))
    except LogLockedError:
        raise CommandError(f"results written to {out}, but the audit log {config.audit_dir} is held by a running "
                           "agent: no privacy.audit entry was written (rerun when `mor client run` is stopped)") \
            from None
    print(f"audit log: {audit_report.ACTION} entry in {config.audit_dir}")
    return 0 if outcome.claim_holds else 1


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("privacy", help="a member's empirical privacy audit of its reward model")
    actions = parser.add_subparsers(dest="privacy_action", required=True, metavar="ACTION")
    audit = actions.add_parser("audit", help="membership-inference audit with canaries: empirical epsilon vs claim")
    audit.add_argument("--config", required=True, help="the agent's TOML (see `mor client init-config`)")
    audit.add_argument("--canaries", type=int, default=256, help="canary pairs, half in each model (default 256)")
    audit.add_argument("--shadows", type=int, default=4, help="shadow models per kind, even, >= 4 (default 4)")
    audit.add_argument("--confidence", type=float, default=0.95, help="Clopper-Pearson confidence (default 0.95)")
    audit.add_argument("--no-contrast", action="store_true", help="skip the non-private contrast models")
    audit.add_argument("--contrast-epochs", type=int, default=None,
                       help="epochs of the non-private models (default: [training].epochs)")
    audit.add_argument("--out", type=Path, default=None, help="results JSON (default <state_dir>/privacy-audit.json)")
    audit.add_argument("--quiet", action="store_true", help="no progress bars")
    audit.set_defaults(func=_guarded(_audit))
