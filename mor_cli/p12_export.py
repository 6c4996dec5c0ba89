"""``mor ca export-p12``: a person's certificate and key as a password-protected PKCS#12 for a browser.

Run where the key is (the person's own machine: ``mor client keygen`` style enrolment means the
CA never holds it). The password comes from an interactive prompt (asked twice) by default, or
from ``--password-file`` / ``--password-env`` for scripts — never from the command line, where
``ps`` and shell history would show it. Algorithms and file mode: :mod:`crypto.p12`.
"""

from __future__ import annotations

import argparse
import getpass
import os
from pathlib import Path
from typing import Any

from mor_cli.errors import CommandError


def register(actions: Any) -> None:
    p12 = actions.add_parser("export-p12", help="write your certificate + key as a password-protected PKCS#12 "
                                                "file to import into a browser (status page)")
    p12.add_argument("--cert", required=True, help="your certificate (PEM), e.g. TLS_DIR/cert.pem")
    p12.add_argument("--key", required=True, help="its private key (PEM), e.g. TLS_DIR/key.pem")
    p12.add_argument("--ca", help="the consortium CA certificate (PEM): checked against the certificate and "
                                  "included, so the chain is complete")
    p12.add_argument("--out", required=True, help="the .p12 file to create (0600; never overwritten)")
    source = p12.add_mutually_exclusive_group()
    source.add_argument("--password-file", help="read the password from the first line of this file")
    source.add_argument("--password-env", metavar="VAR", help="read the password from this environment variable")


def _password(args: argparse.Namespace) -> str:
    if args.password_file:
        try:
            text = Path(args.password_file).read_text("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CommandError(f"--password-file {args.password_file}: cannot read: {exc}") from None
        return text.splitlines()[0] if text else ""
    if args.password_env:
        value = os.environ.get(args.password_env)
        if value is None:
            raise CommandError(f"--password-env {args.password_env}: the variable is not set")
        return value
    try:
        first = getpass.getpass("PKCS#12 password: ")
        if getpass.getpass("again: ") != first:
            raise CommandError("the two passwords differ; nothing written")
    except EOFError:
        raise CommandError("no terminal to ask for a password: use --password-file or --password-env") from None
    return first


def export(args: argparse.Namespace) -> int:
    from crypto.p12 import export_p12

    exported = export_p12(cert=args.cert, key=args.key, ca=args.ca, out=args.out, password=_password(args))
    print(f"wrote {exported.path} (0600) for {exported.identity}, serial {exported.serial:x}, "
          f"valid until {exported.not_after_iso}")
    print("import it into your browser's certificate manager (Your certificates > Import) and the CA certificate "
          "under Authorities; see deploy/RUNBOOK.md, 'Opening the status page'")
    return 0
