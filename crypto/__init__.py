"""The safe cryptography API of MoR-Secure: everything ``server/`` and ``client_agent/`` may use.

TenSEAL contexts, ``cryptography`` primitives and raw keys stay inside this package; callers
get recipes: issue/revoke certificates (or sign a site's CSR, :mod:`crypto.csr`), build and
reload mTLS contexts, seal/open signed score envelopes, sign/verify statements. Errors form
one tree (see :mod:`crypto.errors`).
"""

from crypto.canonical import canonical_json
from crypto.ckks import (
    HE_STANDARD_MAX_MODULUS_BITS,
    CKKSKeyOwner,
    CKKSParameters,
    PublicContext,
    SealedVector,
    load_public_context,
    weighted_sum,
)
from crypto.envelope import (
    Envelope,
    OpenedEnvelope,
    PayloadKind,
    open_envelope,
    seal_scores,
    sign_plain_scores,
)
from crypto.errors import CryptoError, IntegrityError, KeyFileError, ParameterError, PKIError
from crypto.nonces import MemoryNonceStore, NonceStore
from crypto.pki import (
    ROLES,
    CertificateAuthority,
    CertificateRecord,
    IssuedCertificate,
    Role,
    identity_of,
    init_ca,
    make_identity,
    parse_identity,
    role_of,
)
from crypto.signing import SigningKey, VerifyKey, write_private_file
from crypto.tls import client_ssl_context, peer_identity, server_ssl_context

__all__ = [
    "HE_STANDARD_MAX_MODULUS_BITS",
    "ROLES",
    "CKKSKeyOwner",
    "CKKSParameters",
    "CertificateAuthority",
    "CertificateRecord",
    "CryptoError",
    "Envelope",
    "IntegrityError",
    "IssuedCertificate",
    "KeyFileError",
    "MemoryNonceStore",
    "NonceStore",
    "OpenedEnvelope",
    "PKIError",
    "ParameterError",
    "PayloadKind",
    "PublicContext",
    "Role",
    "SealedVector",
    "SigningKey",
    "VerifyKey",
    "canonical_json",
    "client_ssl_context",
    "identity_of",
    "init_ca",
    "load_public_context",
    "make_identity",
    "open_envelope",
    "parse_identity",
    "peer_identity",
    "role_of",
    "seal_scores",
    "server_ssl_context",
    "sign_plain_scores",
    "weighted_sum",
    "write_private_file",
]
