"""Per-agent decryption for PUBLIC rounds only: what the key holder checks before it opens one envelope.

Under ``fused-only`` the server never sees one agent's score. Calibration and the router fit
need per-agent scores, but only on public data (the public calibration batch, the labelled
public preference pairs): those scores are post-processing of each agent's DP-trained reward
model, so when the consortium policy opts in (``privacy.public_rounds_per_agent``) the key
holder may release them — and nothing else. It does not take the server's word that a round
is public; each check below stands on something the server cannot forge:

1. the policy the key holder loaded itself opts in (else 403 ``per_agent_disabled``);
2. the agent's key binding verifies against the consortium CA and the CRL, and names the
   envelope's sender (so the envelope key is the agent's, not one the server made up);
3. the envelope's signature verifies with that key — the agent signed its ``round_id``;
4. the signed ``round_id``'s kind prefix (``calibrate-`` / ``router-``, as
   :mod:`server.rounds` names rounds) is public — a ``score-`` round is refused;
5. the envelope's signed ``payload_sha256`` — the digest of the exact prompts and answers the
   member scored, which the member itself recomputed and checked — is one of the public rounds
   the consortium policy publishes (``privacy.public_round_digests``): a round id can be
   relabelled by a dishonest server, the content of a public set cannot;
6. the ciphertexts are the signed ones, under this key holder's context.

Every refusal is a :class:`~server.rejections.Rejection` (4xx, precise message; the app audits
it as ``reject.<code>``). The decryption itself is counted apart from fused ones.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crypto.ckks import SealedVector
from crypto.envelope import Envelope
from crypto.errors import IntegrityError
from crypto.key_binding import verify_key_binding
from server.rejections import Rejection

PUBLIC_ROUND_KINDS = ("calibrate", "router")


@dataclass(frozen=True)
class PublicRoundGate:
    """What the key holder needs to check a per-agent request on its own (see the module docstring)."""

    enabled: bool  # the consortium policy's privacy.public_rounds_per_agent, as the key holder read it
    ca_cert: Path
    is_revoked: Callable[[int], bool]
    context_sha256: str
    policy_source: str = "no policy configured"
    public_round_digests: frozenset[str] = frozenset()  # the policy's privacy.public_round_digests
    clock: Callable[[], float] = time.time

    def check(self, envelope: Any, key_binding: Any) -> tuple[Envelope, SealedVector]:
        """The verified envelope and the sealed vector it signs; Rejection on any failed check."""
        if not self.enabled:
            raise Rejection(403, "per_agent_disabled",
                            f"per-agent decryption is off: {self.policy_source} does not set "
                            "privacy.public_rounds_per_agent = true")
        try:
            env = Envelope.from_dict(envelope)
        except IntegrityError:
            raise Rejection(400, "integrity_error", "envelope: malformed") from None
        try:
            bound = verify_key_binding(key_binding, ca_cert_pem=self.ca_cert.read_bytes(), now=self.clock())
        except IntegrityError:
            raise Rejection(403, "bad_key_binding",
                            f"{env.sender}: key binding does not verify against the consortium CA") from None
        if bound.identity != env.sender:
            raise Rejection(403, "bad_key_binding",
                            f"key binding is for {bound.identity}, the envelope's sender is {env.sender}")
        if self.is_revoked(bound.serial):
            raise Rejection(403, "revoked", f"{env.sender}: certificate serial {bound.serial:x} is revoked")
        try:
            bound.verify_key.verify(env.signature, env.signed_bytes())
        except IntegrityError:
            raise Rejection(403, "forged_envelope",
                            f"{env.sender}: envelope signature does not verify with the agent's bound key") from None
        kind = env.round_id.split("-", 1)[0]
        if kind not in PUBLIC_ROUND_KINDS:
            raise Rejection(403, "not_public_round",
                            f"{env.sender}: signed round_id {env.round_id!r} is a {kind!r} round; per-agent "
                            f"decryption is only for public rounds ({', '.join(PUBLIC_ROUND_KINDS)})")
        if env.payload_sha256 is None or env.payload_sha256 not in self.public_round_digests:
            raise Rejection(403, "not_a_public_set",
                            f"{env.sender}: the signed content of round {env.round_id!r} "
                            f"({(env.payload_sha256 or 'none')[:16]}…) is not a public round {self.policy_source} "
                            f"publishes in privacy.public_round_digests ({len(self.public_round_digests)} listed)")
        if env.kind != "ckks" or env.context_sha256 != self.context_sha256:
            raise Rejection(400, "wrong_context",
                            f"{env.sender}: envelope is not sealed under this key holder's public context")
        return env, SealedVector(env.ciphertexts, env.length, self.context_sha256)
