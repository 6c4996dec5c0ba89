"""``mor server backup`` / ``mor server restore``: state and audit log together (server/backup.py, server/restore.py).

    mor server backup  --config server.toml --out /backups/mor-2026-11-29.tar.gz   (or a new directory)
    mor server restore --config server.toml --from /backups/mor-2026-11-29.tar.gz [--force]

Both need the server stopped (they take the audit log's writer lock) and say so if it runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mor_cli.main import CommandError


def add_state_actions(actions: Any) -> None:
    """Add ``backup`` and ``restore`` to ``mor server``'s actions."""
    backup = actions.add_parser("backup", help="back up the state database and the audit log at one point "
                                               "(the server must be stopped)")
    backup.add_argument("--config", required=True, help="server TOML (its database_url, audit_dir, signing_key)")
    backup.add_argument("--out", required=True, help="a new directory, or FILE.tar.gz")
    backup.set_defaults(func=_backup)
    restore = actions.add_parser("restore", help="restore a backup after verifying it (the server must be stopped)")
    restore.add_argument("--config", required=True, help="server TOML of the server to restore into")
    restore.add_argument("--from", dest="source", required=True, help="a backup directory or .tar.gz")
    restore.add_argument("--force", action="store_true",
                         help="replace a target whose audit log is newer than or differs from the backup's "
                              "(its files are kept aside, never deleted); never overrides a running server")
    restore.set_defaults(func=_restore)


def _guarded(action: Callable[[], None]) -> int:
    from server.errors import ServerError

    try:
        action()
    except ServerError as exc:
        raise CommandError(str(exc)) from None
    return 0


def _backup(args: argparse.Namespace) -> int:
    def run() -> None:
        from server.backup import backup
        from server.config import load_server_config

        manifest = backup(load_server_config(args.config), Path(args.out))
        rows = sum(manifest["tables"].values())
        print(f"backup written to {args.out}: {rows} rows at schema revision {manifest['schema_revision']}, "
              f"audit log of {manifest['audit']['size']} entries, root {manifest['audit']['root']}")

    return _guarded(run)


def _restore(args: argparse.Namespace) -> int:
    def run() -> None:
        from server.config import load_server_config
        from server.restore import restore

        done = restore(load_server_config(args.config), Path(args.source), force=args.force)
        manifest = done["manifest"]
        print(f"restored {args.source} into {done['database']}: audit log of {manifest['audit']['size']} entries "
              f"(root {manifest['audit']['root']}) verified against the state, and state.restored logged")
        if done["kept_aside"]:
            print(f"the previous audit log is kept in {done['kept_aside']}")

    return _guarded(run)
