"""``mor ca``: run the consortium certificate authority (init, issue, sign-csr, revoke, list, crl, export-p12).

Every command that changes the CA also appends to the CA's own signed audit log
(:mod:`mor_cli.ca_audit`); a refused CSR is recorded too, with the reason.
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path
from typing import Any

from mor_cli import p12_export
from mor_cli.ca_audit import ca_audit, sha256_digest
from mor_cli.main import CommandError

ROLE_CHOICES = ["server", "client", "keyholder", "auditor", "trainer"]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("ca", help="consortium certificate authority")
    actions = parser.add_subparsers(dest="ca_action", required=True, metavar="ACTION")

    init = actions.add_parser("init", help="create a new consortium CA in --dir")
    init.add_argument("--dir", required=True, help="CA directory (created)")
    init.add_argument("--consortium", default="mor", help="consortium name used in identities (default: mor)")
    init.add_argument("--days", type=int, default=3650, help="CA validity in days (default: 3650)")

    issue = actions.add_parser("issue", help="generate a key at the CA and certify it (prefer sign-csr)")
    issue.add_argument("--dir", required=True, help="CA directory")
    issue.add_argument("--name", required=True, help="party name (also its bundle folder)")
    issue.add_argument("--role", required=True, choices=ROLE_CHOICES)
    issue.add_argument("--dns", action="append", default=[], help="DNS name (server/keyholder; repeatable)")
    issue.add_argument("--ip", action="append", default=[], help="IP address (server/keyholder; repeatable)")
    issue.add_argument("--days", type=int, default=365, help="validity in days (default: 365)")

    sign = actions.add_parser("sign-csr", help="check a site's CSR and sign it (the private key stays at the site)")
    sign.add_argument("csr", metavar="FILE", help="the CSR the site made with `mor client|keyholder|server keygen`")
    sign.add_argument("--dir", required=True, help="CA directory")
    sign.add_argument("--role", required=True, choices=ROLE_CHOICES, help="the role the CSR must ask for")
    sign.add_argument("--renew", action="store_true",
                      help="the name holds a valid certificate: issue an overlapping one for the new key")
    sign.add_argument("--days", type=int, default=365, help="validity in days (default: 365)")
    sign.add_argument("--out", help="where to write the certificate (default: DIR/parties/NAME/cert-SERIAL.pem)")

    revoke = actions.add_parser("revoke", help="revoke a party's certificate and regenerate the CRL")
    revoke.add_argument("--dir", required=True, help="CA directory")
    revoke.add_argument("--name", required=True, help="party name")
    revoke.add_argument("--serial", help="hex serial: which certificate, when a renewal left two valid")

    listing = actions.add_parser("list", help="show issued and revoked certificates and the CRL's next update")
    listing.add_argument("--dir", required=True, help="CA directory")

    crl = actions.add_parser("crl", help="regenerate the CRL (it expires after --days)")
    crl.add_argument("--dir", required=True, help="CA directory")
    crl.add_argument("--days", type=int, default=30, help="CRL validity in days (default: 30)")

    p12_export.register(actions)
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from crypto.errors import CryptoError

    try:
        return _ACTIONS[args.ca_action](args)
    except CryptoError as exc:
        raise CommandError(str(exc)) from None


def _load(args: argparse.Namespace) -> Any:
    from crypto.pki import CertificateAuthority

    return CertificateAuthority.load(args.dir)


def _init(args: argparse.Namespace) -> int:
    from crypto.pki import init_ca

    ca = init_ca(args.dir, args.consortium, days=args.days)
    with ca_audit(args.dir, ca.consortium) as audit:
        audit.record("ca.created", {"consortium": ca.consortium, "days": args.days},
                     digests={"ca_cert": sha256_digest(ca.ca_cert_path.read_bytes())})
    print(f"created CA for consortium {ca.consortium!r}: {ca.ca_cert_path} (CRL {ca.crl_path})")
    return 0


def _issue(args: argparse.Namespace) -> int:
    ca = _load(args)
    with ca_audit(args.dir, ca.consortium) as audit:
        issued = ca.issue(args.name, args.role, dns=args.dns, ips=args.ip, days=args.days)
        audit.record("certificate.issued", {"identity": issued.identity, "serial": f"{issued.serial:x}",
                                            "not_after": issued.not_after.isoformat(), "source": "ca",
                                            "dns": args.dns, "ips": args.ip})
    print(f"issued {issued.identity} serial {issued.serial:x} valid until {issued.not_after.isoformat()}")
    print(f"  cert {issued.cert_path}\n  key  {issued.key_path} (0600)\n  ca   {issued.ca_path}")
    return 0


def _sign_csr(args: argparse.Namespace) -> int:
    from crypto.csr import sign_csr
    from crypto.errors import PKIError

    path = Path(args.csr)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CommandError(f"{path}: cannot read CSR: {exc.strerror}") from None
    ca = _load(args)
    with ca_audit(args.dir, ca.consortium) as audit:
        try:
            signed = sign_csr(ca, data, args.role, source=str(path), renew=args.renew, days=args.days)
        except PKIError as exc:
            audit.record("csr.refused", {"file": str(path), "role": args.role, "reason": str(exc)},
                         outcome="refused", digests={"csr": sha256_digest(data)})
            raise CommandError(f"{path}: refused: {exc}") from None
        request = signed.request
        out = Path(args.out) if args.out else ca.party_dir(request.name) / f"cert-{signed.serial:x}.pem"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(signed.cert_pem)
        audit.record("certificate.issued", {
            "identity": request.identity, "serial": f"{signed.serial:x}", "not_after": signed.not_after.isoformat(),
            "source": "csr", "renewal": args.renew, "key_type": request.key_type, "dns": list(request.dns),
            "ips": list(request.ips)},
            digests={"csr": sha256_digest(data), "certificate": sha256_digest(signed.cert_pem)})
    print(f"signed {request.identity} serial {signed.serial:x} valid until {signed.not_after.isoformat()} "
          f"(site key {request.key_type}{', renewal' if args.renew else ''})")
    print(f"  cert {out}\n  send it to the site with {ca.ca_cert_path} and {ca.crl_path}")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    ca = _load(args)
    try:
        serial = int(args.serial, 16) if args.serial is not None else None
    except ValueError:
        raise CommandError(f"--serial {args.serial!r}: not a hexadecimal serial (see `mor ca list`)") from None
    with ca_audit(args.dir, ca.consortium) as audit:
        record = ca.revoke(args.name, serial=serial)
        audit.record("certificate.revoked", {"identity": record.identity, "serial": f"{record.serial:x}"})
    print(f"revoked {record.identity} serial {record.serial:x}; CRL updated: {ca.crl_path}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from crypto.crl_health import read_crl_health

    ca = _load(args)
    print(f"consortium {ca.consortium}  CA {ca.ca_cert_path}")
    health = read_crl_health(ca.crl_path)
    if health.next_update is not None:
        days = (health.next_update - dt.datetime.now(dt.UTC)).total_seconds() / 86400
        print(f"CRL #{health.number}  next update {health.next_update.isoformat()} ({days:.1f} days from now)")
    if health.warning:
        print(f"WARNING: {health.warning}")
    print(f"{'NAME':<20} {'ROLE':<10} {'STATUS':<8} {'SERIAL':<41} NOT_AFTER / REVOKED_AT")
    for r in ca.list():
        status = "revoked" if r.revoked_at else "valid"
        when = (r.revoked_at or r.not_after).isoformat()
        print(f"{r.name:<20} {r.role:<10} {status:<8} {r.serial:<41x} {when}")
    return 0


def _crl(args: argparse.Namespace) -> int:
    from crypto.crl_health import read_crl_health

    ca = _load(args)
    with ca_audit(args.dir, ca.consortium) as audit:
        path = ca.refresh_crl(days=args.days)
        health = read_crl_health(path)
        audit.record("crl.signed", {"crl_number": health.number, "days": args.days,
                                    "next_update": health.next_update.isoformat() if health.next_update else None})
    print(f"CRL regenerated: {path} (next update {health.next_update.isoformat() if health.next_update else '-'})")
    return 0


_ACTIONS = {"init": _init, "issue": _issue, "sign-csr": _sign_csr, "revoke": _revoke, "list": _list, "crl": _crl,
            "export-p12": p12_export.export}
