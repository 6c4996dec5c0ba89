"""``mor policy``: validate consortium policy files and show the policy actually in force.

``mor policy check FILE...`` prints each valid file's effective policy (every default filled
in) as TOML that loads back to the same digest, or as JSON with ``--json``; broken files get
one precise ``FILE: key: reason`` line per problem on stderr and exit status 2.
``mor policy list`` shows where the shipped policies are installed, to copy and adapt.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from typing import Any

from mor_cli.errors import CommandError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("policy", help="validate and show consortium policies")
    actions = parser.add_subparsers(dest="policy_action", required=True, metavar="ACTION")
    check = actions.add_parser("check", help="validate policy files and print the effective policy and its digest")
    check.add_argument("files", nargs="+", metavar="FILE", help="policy TOML file(s)")
    check.add_argument("--json", action="store_true", help="print a JSON array (file, digest, insecure, policy)")
    check.set_defaults(func=_check)
    listing = actions.add_parser("list", help="list the policy files shipped with MoR-Secure")
    listing.set_defaults(func=_list)


def _check(args: argparse.Namespace) -> int:
    from policies import InsecurePolicyWarning, PolicyError, load_policy, render_toml

    reports, failed = [], 0
    for path in args.files:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", InsecurePolicyWarning)
            try:
                policy = load_policy(path)
            except PolicyError as exc:
                print(exc, file=sys.stderr)
                failed += 1
                continue
        for warning in caught:
            print(f"WARNING: {warning.message}", file=sys.stderr)
        if args.json:
            reports.append({"file": path, "digest": policy.digest(), "insecure": policy.insecure_reasons(),
                            "policy": policy.to_dict()})
        else:
            header = [f"# {path}: OK", f"# digest: {policy.digest()}"]
            header += [f"# INSECURE: {reason}" for reason in policy.insecure_reasons()]
            print("\n".join(header) + "\n" + render_toml(policy))
    if args.json:
        print(json.dumps(reports, indent=2))
    if failed:
        raise CommandError(f"{failed} of {len(args.files)} policy file(s) invalid (details above)")
    return 0


def _list(args: argparse.Namespace) -> int:
    from policies import BUILTIN_POLICIES, builtin_policy_path

    for name in BUILTIN_POLICIES:
        print(f"{name:<12} {builtin_policy_path(name)}")
    return 0
