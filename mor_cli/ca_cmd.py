"""``mor ca``: run the consortium certificate authority (init, issue, revoke, list, crl)."""

from __future__ import annotations

import argparse
from typing import Any

from mor_cli.main import CommandError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("ca", help="consortium certificate authority")
    actions = parser.add_subparsers(dest="ca_action", required=True, metavar="ACTION")

    init = actions.add_parser("init", help="create a new consortium CA in --dir")
    init.add_argument("--dir", required=True, help="CA directory (created)")
    init.add_argument("--consortium", default="mor", help="consortium name used in identities (default: mor)")
    init.add_argument("--days", type=int, default=3650, help="CA validity in days (default: 3650)")

    issue = actions.add_parser("issue", help="issue a key and certificate to a party")
    issue.add_argument("--dir", required=True, help="CA directory")
    issue.add_argument("--name", required=True, help="party name (also its bundle folder)")
    issue.add_argument("--role", required=True, choices=["server", "client", "keyholder", "auditor"])
    issue.add_argument("--dns", action="append", default=[], help="DNS name (server/keyholder; repeatable)")
    issue.add_argument("--ip", action="append", default=[], help="IP address (server/keyholder; repeatable)")
    issue.add_argument("--days", type=int, default=365, help="validity in days (default: 365)")

    revoke = actions.add_parser("revoke", help="revoke a party's certificate and regenerate the CRL")
    revoke.add_argument("--dir", required=True, help="CA directory")
    revoke.add_argument("--name", required=True, help="party name")

    listing = actions.add_parser("list", help="show issued and revoked certificates")
    listing.add_argument("--dir", required=True, help="CA directory")

    crl = actions.add_parser("crl", help="regenerate the CRL (it expires after --days)")
    crl.add_argument("--dir", required=True, help="CA directory")
    crl.add_argument("--days", type=int, default=30, help="CRL validity in days (default: 30)")

    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from crypto.errors import CryptoError

    try:
        return _ACTIONS[args.ca_action](args)
    except CryptoError as exc:
        raise CommandError(str(exc)) from None


def _init(args: argparse.Namespace) -> int:
    from crypto.pki import init_ca

    ca = init_ca(args.dir, args.consortium, days=args.days)
    print(f"created CA for consortium {ca.consortium!r}: {ca.ca_cert_path} (CRL {ca.crl_path})")
    return 0


def _issue(args: argparse.Namespace) -> int:
    from crypto.pki import CertificateAuthority

    issued = CertificateAuthority.load(args.dir).issue(
        args.name, args.role, dns=args.dns, ips=args.ip, days=args.days
    )
    print(f"issued {issued.identity} serial {issued.serial:x} valid until {issued.not_after.isoformat()}")
    print(f"  cert {issued.cert_path}\n  key  {issued.key_path} (0600)\n  ca   {issued.ca_path}")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    from crypto.pki import CertificateAuthority

    ca = CertificateAuthority.load(args.dir)
    record = ca.revoke(args.name)
    print(f"revoked {record.identity} serial {record.serial:x}; CRL updated: {ca.crl_path}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from crypto.pki import CertificateAuthority

    ca = CertificateAuthority.load(args.dir)
    print(f"consortium {ca.consortium}  CA {ca.ca_cert_path}")
    print(f"{'NAME':<20} {'ROLE':<10} {'STATUS':<8} {'SERIAL':<41} NOT_AFTER / REVOKED_AT")
    for r in ca.list():
        status = "revoked" if r.revoked_at else "valid"
        when = (r.revoked_at or r.not_after).isoformat()
        print(f"{r.name:<20} {r.role:<10} {status:<8} {r.serial:<41x} {when}")
    return 0


def _crl(args: argparse.Namespace) -> int:
    from crypto.pki import CertificateAuthority

    path = CertificateAuthority.load(args.dir).refresh_crl(days=args.days)
    print(f"CRL regenerated: {path}")
    return 0


_ACTIONS = {"init": _init, "issue": _issue, "revoke": _revoke, "list": _list, "crl": _crl}
