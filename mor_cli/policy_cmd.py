"""``mor policy check FILE...``: validate policy files and print the effective policy."""

from __future__ import annotations

import argparse
import json
import warnings
from typing import Any

from mor_cli.errors import CommandError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("policy", help="validate and show consortium policies")
    actions = parser.add_subparsers(dest="policy_action", required=True, metavar="ACTION")
    check = actions.add_parser("check", help="validate policy files and print the effective policy")
    check.add_argument("files", nargs="+", metavar="FILE")
    check.add_argument("--json", action="store_true", help="print the effective policy as JSON")
    check.set_defaults(func=_check)


def _format(value: Any, prefix: str = "") -> list[str]:
    lines = []
    for key, item in value.items():
        if isinstance(item, dict):
            lines.extend(_format(item, f"{prefix}{key}."))
        else:
            lines.append(f"  {prefix}{key} = {json.dumps(item)}")
    return lines


def _check(args: argparse.Namespace) -> int:
    from policies import InsecurePolicyWarning, PolicyError, load_policy

    failures = []
    for path in args.files:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", InsecurePolicyWarning)
            try:
                policy = load_policy(path)
            except PolicyError as exc:
                failures.append(str(exc))
                continue
        if args.json:
            print(json.dumps({"file": path, "digest": policy.digest(), "policy": policy.to_dict(),
                              "insecure": policy.insecure_reasons()}, indent=2))
        else:
            print(f"{path}: OK  {policy.digest()}")
            print("\n".join(_format(policy.to_dict())))
        for warning in caught:
            if issubclass(warning.category, InsecurePolicyWarning):
                print(f"WARNING: {warning.message}")
    if failures:
        raise CommandError("\n".join(failures))
    return 0
