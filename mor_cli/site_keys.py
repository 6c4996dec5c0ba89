"""``mor client|keyholder|server keygen`` and ``install-cert``: a site's side of enrolment.

``keygen`` writes a new private key (0600) and a CSR into the site's TLS folder; only the CSR
goes to the consortium, which signs it with ``mor ca sign-csr``. Run again while ``key.pem``
exists, it prepares a renewal (``next-key.pem``) and the current key keeps serving.
``install-cert`` checks the signed certificate against this site's key and CA certificate and
puts it in place; running agents, servers and key holders use it for their next connections.
Folder layout and checks: :mod:`crypto.csr`.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path
from typing import Any

from mor_cli.errors import CommandError

SERVING = ("server", "keyholder")


def add_site_key_actions(actions: Any, role: str) -> None:
    """Add ``keygen`` and ``install-cert`` to the sub-command ``actions`` of a party with ``role``."""
    keygen = actions.add_parser("keygen", help="make this site's private key (stays here) and a CSR to send the CA")
    keygen.add_argument("--dir", required=True, help="this site's TLS folder (key.pem, cert.pem, ca.pem)")
    keygen.add_argument("--consortium", required=True, help="the consortium name in identities")
    keygen.add_argument("--name", required=True, help=f"this {role}'s name: mor://CONSORTIUM/{role}/NAME")
    if role in SERVING:
        keygen.add_argument("--dns", action="append", default=[], help="DNS name clients connect to (repeatable)")
        keygen.add_argument("--ip", action="append", default=[], help="IP address clients connect to (repeatable)")
    keygen.set_defaults(func=partial(_keygen, role))

    install = actions.add_parser("install-cert", help="install the certificate the CA signed for this site's key")
    install.add_argument("cert", metavar="CERT", help="the certificate from `mor ca sign-csr`")
    install.add_argument("--dir", required=True, help="this site's TLS folder (as given to keygen)")
    install.add_argument("--ca", help="the consortium CA certificate (copied to DIR/ca.pem the first time)")
    install.set_defaults(func=_install)


def _keygen(role: str, args: argparse.Namespace) -> int:
    from crypto.csr import generate_key_and_csr
    from crypto.errors import CryptoError

    try:
        request = generate_key_and_csr(args.dir, args.consortium, role, args.name, dns=getattr(args, "dns", ()),
                                       ips=getattr(args, "ip", ()))
    except CryptoError as exc:
        raise CommandError(str(exc)) from None
    print(f"{'renewal key' if request.renewal else 'key'} {request.key_path} (0600: it never leaves this machine)")
    print(f"CSR {request.csr_path} for {request.identity}; send it to the consortium CA operator, who runs:")
    renew = " --renew" if request.renewal else ""
    print(f"  mor ca sign-csr {request.csr_path.name} --role {role} --dir CA_DIR{renew}")
    return 0


def _install(args: argparse.Namespace) -> int:
    from crypto.csr import install_certificate
    from crypto.errors import CryptoError

    try:
        cert_pem = Path(args.cert).read_bytes()
        ca_pem = Path(args.ca).read_bytes() if args.ca else None
    except OSError as exc:
        raise CommandError(f"{exc.filename}: cannot read: {exc.strerror}") from None
    try:
        installed = install_certificate(args.dir, cert_pem, ca_pem=ca_pem)
    except CryptoError as exc:
        raise CommandError(f"{args.cert}: {exc}") from None
    print(f"installed {installed.identity} serial {installed.serial:x} valid until {installed.not_after.isoformat()}"
          f": {installed.cert_path}{' (renewal: next-key.pem is now key.pem)' if installed.renewal else ''}")
    if installed.replaced_serial is not None:
        name = installed.identity.rsplit("/", 1)[-1]
        print(f"running processes present it on their next connection; once they do, the CA may revoke the old "
              f"one: mor ca revoke --dir CA_DIR --name {name} --serial {installed.replaced_serial:x}")
    return 0
