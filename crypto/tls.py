"""Mutual-TLS contexts for the consortium: TLS 1.3 only, consortium CA only, CRL checked.

No system roots are loaded: a certificate from any public CA is a stranger here. With a
CRL, OpenSSL checks the peer's (leaf) certificate against it and *fails closed* when the
CRL is missing or expired — which is why the CA refreshes its CRL on every revocation.
A context reads its files once: :class:`crypto.tls_reload.TlsReloader` loads a renewed
certificate or a refreshed CRL into a live one.
"""

from __future__ import annotations

import ssl
import warnings
from pathlib import Path

from crypto.errors import IntegrityError, KeyFileError, PKIError
from crypto.pki import identity_of

PathLike = str | Path


def _base(purpose: ssl._SSLMethod, cert: PathLike, key: PathLike, ca: PathLike, crl: PathLike | None) -> ssl.SSLContext:
    context = ssl.SSLContext(purpose)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_REQUIRED
    try:
        context.load_cert_chain(certfile=str(cert), keyfile=str(key))
        context.load_verify_locations(cafile=str(ca))
        if crl is not None:
            context.load_verify_locations(cafile=str(crl))
            context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    except (OSError, ssl.SSLError) as exc:
        raise KeyFileError(f"cannot load TLS material (cert={cert}, key={key}, ca={ca}, crl={crl}): {exc}") from None
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    return context


def server_ssl_context(cert: PathLike, key: PathLike, ca: PathLike, crl: PathLike | None = None) -> ssl.SSLContext:
    """A server context that requires a client certificate from the consortium CA."""
    return _base(ssl.PROTOCOL_TLS_SERVER, cert, key, ca, crl)


def client_ssl_context(
    cert: PathLike, key: PathLike, ca: PathLike, crl: PathLike | None = None, server_hostname_check: bool = True
) -> ssl.SSLContext:
    """A client context presenting our certificate and trusting only the consortium CA.

    ``server_hostname_check=False`` is insecure (any consortium certificate with serverAuth
    could impersonate the server) and warns; authorise on :func:`peer_identity` if you use it.
    """
    context = _base(ssl.PROTOCOL_TLS_CLIENT, cert, key, ca, crl)
    if not server_hostname_check:
        warnings.warn("TLS server hostname check disabled (insecure)", RuntimeWarning, stacklevel=2)
        context.check_hostname = False
    return context


def peer_identity(der: bytes | None) -> str:
    """The ``mor://`` identity in a verified peer certificate; :class:`IntegrityError` if absent."""
    if not der:
        raise IntegrityError()
    try:
        return identity_of(der)
    except PKIError:
        raise IntegrityError() from None
