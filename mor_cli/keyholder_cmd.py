"""``mor keyholder serve --config keyholder.toml``: run the fused-only CKKS key holder.

Stops gracefully on SIGTERM/SIGINT: final signed checkpoint of its audit log, exit 0.
"""

from __future__ import annotations

import argparse
from typing import Any

from mor_cli.main import CommandError
from mor_cli.site_keys import add_site_key_actions


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("keyholder", help="fused-only CKKS key holder")
    actions = parser.add_subparsers(dest="keyholder_action", required=True, metavar="ACTION")
    serve = actions.add_parser("serve", help="serve the key holder over mutual TLS")
    serve.add_argument("--config", required=True, help="key holder TOML (see server/keyholder/config.py)")
    serve.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--log-format", default=None, choices=["text", "json"],
                       help="log lines as text or one JSON object per line (default: [observability].log_format)")
    add_site_key_actions(actions, "keyholder")
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from server.errors import ServerError
    from server.observability.logs import configure_logging
    from server.runner import serve_keyholder

    configure_logging(args.log_level, args.log_format)
    try:
        serve_keyholder(args.config, log_level=args.log_level)
    except ServerError as exc:
        raise CommandError(str(exc)) from None
    return 0
