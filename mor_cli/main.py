"""The ``mor`` command: one entry point, one sub-command module per concern.

Each ``mor_cli/<name>_cmd.py`` exposes ``register(subparsers)`` and adds its own sub-command
with its handler as ``func``. Handlers import heavy libraries (torch, tenseal) lazily, so
``mor ca list`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence

from mor_cli.errors import CommandError

COMMAND_MODULES = ("ca", "policy", "audit", "data", "model", "client", "privacy", "server", "keyholder", "demo", "eval",
                   "bench")

__all__ = ["CommandError", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mor", description="MoR-Secure: federated Mixture-of-Rewards alignment of VLMs."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        module_name = f"mor_cli.{name}_cmd"
        if importlib.util.find_spec(module_name) is None:
            continue
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except CommandError as exc:
        print(f"mor {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # Output piped into e.g. `head`, which closed early: not an error of ours.
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    raise SystemExit(main())
