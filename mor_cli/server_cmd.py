"""``mor server``: run the aggregation server.

    mor server serve --config server.toml     the HTTP service (mutual TLS) on its own

Hook for more actions (the round coordinator's ``run``): a module adds an entry to
:data:`ACTIONS` — ``ACTIONS["run"] = (add_arguments, handler)`` — before ``register`` is
called (e.g. at import of ``mor_cli.server_cmd``'s sibling), or edits the dict below.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from mor_cli.main import CommandError

AddArguments = Callable[[argparse.ArgumentParser], None]
Handler = Callable[[argparse.Namespace], int]


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="server TOML (see server/config.py)")
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])


def _serve(args: argparse.Namespace) -> int:
    from server.errors import ServerError
    from server.wiring import serve

    try:
        serve(args.config, log_level=args.log_level)
    except ServerError as exc:
        raise CommandError(str(exc)) from None
    return 0


ACTIONS: dict[str, tuple[str, AddArguments, Handler]] = {
    "serve": ("serve the HTTP API over mutual TLS", _serve_arguments, _serve),
}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("server", help="aggregation server")
    actions = parser.add_subparsers(dest="server_action", required=True, metavar="ACTION")
    for name, (help_text, add_arguments, _handler) in ACTIONS.items():
        add_arguments(actions.add_parser(name, help=help_text))
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    return ACTIONS[args.server_action][2](args)
