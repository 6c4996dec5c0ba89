"""Fusion mechanics: from the agents' verified envelopes to one reward per item.

One function per privacy mode, wrapping the router (the router never branches on the mode,
see :mod:`server.router.base`); the mode objects of :mod:`server.privacy_mode` call them:

* :func:`fuse_tls_only` — scores arrive in the clear (signed, inside mTLS);
* :func:`fuse_ckks` — the server's :class:`~crypto.ckks.CKKSKeyOwner` decrypts each agent's
  vector (every decryption audited); the router may then see per-agent scores;
* :func:`fuse_fused_only` — the server holds only the public context: it multiplies each
  agent's ciphertext by the router's input-only weights and adds them homomorphically; a
  separate key holder decrypts that one fused vector (and logs it). No single agent's score
  ever exists in plaintext on the server.

Calibration (each agent's mean/std on the public calibration batch,
:class:`wire.calibration.Calibration`) puts every reward model on one scale:
``z = (s - mean) / std``. In fused-only mode it is folded into the homomorphic
weights (``w / std``) and a plaintext offset (``sum w * mean / std``) subtracted after
decryption, so all three modes compute the same number (to CKKS precision).

Per-agent vectors (calibrate and router rounds, all on public data) come from the mode object's
``collect`` (the functions live in :mod:`server.agent_vectors`):
decrypted by the server (ckks), read from the signed header (tls-only) or — fused-only, only
when the policy sets ``privacy.public_rounds_per_agent`` — decrypted by the key holder, which
checks each agent's own signature on a ``calibrate-``/``router-`` round id before it opens
anything (:mod:`server.keyholder.public_rounds`). Score rounds stay fused in every case.

Robust options (the policy's ``[fusion]``: clip calibrated scores, trimmed or median aggregate,
:mod:`server.robust_fusion`) and the mixing rules (group normalisation, whose groups are the items
sharing one prompt feature row, and the disagreement penalty, :mod:`server.router.mixing`) apply
where per-agent vectors are plaintext; the per-member weight
cap wraps the router instead (:mod:`server.router.capped`) and so holds in every mode.

The policy's score range is enforced per agent where scores are visible (``refuse``: the
agent's whole vector is dropped and the others renormalised; ``clip``: clipped and counted).
In fused-only mode only the fused value is visible; since it is a convex combination of
calibrated in-range scores it must lie in ``[sum w*lo_k, sum w*hi_k]``: a value outside proves
an out-of-range score, and that item is refused (reward ``None``) or clipped into the bound.

Errors: :class:`~server.errors.FusionError` (envelopes/inputs that cannot be fused) and its
:class:`~server.errors.PrivacyModeError` (what the privacy mode forbids), drawn in the one
tree of :mod:`server.errors` and importable from here as before.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch

from crypto.ckks import CKKSKeyOwner, PublicContext, SealedVector
from crypto.envelope import Envelope
from crypto.errors import IntegrityError
from server.agent_vectors import decrypt_vectors, plain_vectors
from server.errors import FusionError, PrivacyModeError
from server.robust_fusion import NO_ROBUSTNESS, RobustFusion
from server.router.base import RouterBase
from server.router.mixing import feature_groups
from server.services import AuditTrail
from wire.calibration import IDENTITY, Calibration

RANGE_TOLERANCE = 1e-3  # CKKS noise + the key owner's rounding, well above both


class FusedDecryptor(Protocol):
    """What fused-only mode needs from the key holder (``server.keyholder.client.KeyHolderClient``)."""

    def decrypt_fused(self, sealed: SealedVector, *, round_id: str) -> DecryptedFused: ...


class DecryptedFused(Protocol):
    """The key holder's reply (``wire.messages.DecryptFusedResponse``)."""

    @property
    def values(self) -> list[float]: ...
    @property
    def decryptions(self) -> int: ...
    @property
    def audit_index(self) -> int: ...


@dataclass(frozen=True)
class ScoreRange:
    """The policy's accepted raw score range and what to do with a score outside it."""

    low: float
    high: float
    out_of_range: Literal["clip", "refuse"] = "refuse"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low < self.high):
            raise FusionError(f"score range [{self.low}, {self.high}]: need finite low < high")


@dataclass(frozen=True)
class FusionInput:
    """One round's material: per-item router features and each answering agent's verified envelope."""

    round_id: str
    features: torch.Tensor  # [n_items, D]: the features of each item's prompt
    envelopes: Mapping[str, Envelope]
    calibrations: Mapping[str, Calibration] = field(default_factory=dict)

    @property
    def n_items(self) -> int:
        return int(self.features.shape[0])


@dataclass(frozen=True)
class FusionOutcome:
    """The fused reward per item (``None``: refused) and what went into it."""

    rewards: list[float | None]
    agents_used: tuple[str, ...]
    weights: dict[str, float]  # mean router weight per used agent over the items
    refused: dict[str, str]  # agent -> reason its scores were not used
    clipped: dict[str, int]  # agent (or "fused") -> how many values were clipped
    uncalibrated: tuple[str, ...]
    decryptions: int  # ciphertexts decrypted for this fusion


def _usable(router: RouterBase, inp: FusionInput) -> tuple[dict[str, Envelope], dict[str, str]]:
    """Envelopes the router can weigh and whose length matches the round; the rest refused by reason."""
    usable: dict[str, Envelope] = {}
    refused: dict[str, str] = {}
    for agent in sorted(inp.envelopes):
        env = inp.envelopes[agent]
        if agent not in router.agents:
            refused[agent] = "not an agent of the current router"
        elif env.length != inp.n_items:
            refused[agent] = f"{env.length} scores for {inp.n_items} items"
        else:
            usable[agent] = env
    return usable, refused


def _calibration(inp: FusionInput, agent: str) -> Calibration:
    return inp.calibrations.get(agent, IDENTITY)


def _mean_weights(weights: torch.Tensor, agents: Sequence[str]) -> dict[str, float]:
    return {a: float(weights[:, i].mean()) for i, a in enumerate(agents)}


def check_range(vectors: Mapping[str, Sequence[float]], scores: ScoreRange
                ) -> tuple[dict[str, torch.Tensor], dict[str, str], dict[str, int]]:
    """Apply the policy's score range to visible per-agent vectors: (kept, refused, clipped counts)."""
    kept: dict[str, torch.Tensor] = {}
    refused: dict[str, str] = {}
    clipped: dict[str, int] = {}
    for agent, raw in vectors.items():
        values = torch.tensor(list(raw), dtype=torch.float64)
        if not bool(torch.isfinite(values).all()):
            refused[agent] = "non-finite score"
            continue
        outside = int(((values < scores.low) | (values > scores.high)).sum())
        if outside and scores.out_of_range == "refuse":
            refused[agent] = f"{outside} scores outside [{scores.low}, {scores.high}]"
            continue
        if outside:
            clipped[agent] = outside
            values = values.clamp(scores.low, scores.high)
        kept[agent] = values
    return kept, refused, clipped


def fuse_vectors(router: RouterBase, inp: FusionInput, vectors: Mapping[str, Sequence[float]],
                 scores: ScoreRange, refused: dict[str, str], decryptions: int,
                 robust: RobustFusion = NO_ROBUSTNESS) -> FusionOutcome:
    """Range check, calibrate, ``robust`` clip and aggregate per-agent plaintext vectors (tls-only and ckks).

    Clipped calibrated scores are counted in ``clipped`` as ``"<agent>:clip_z"`` (``:`` is not
    in an agent name). The default ``robust`` fuses with ``router.fuse``, as before it existed.
    """
    kept, out_of_range, clipped = check_range(vectors, scores)
    refused = {**refused, **out_of_range}
    calibrated: dict[str, torch.Tensor] = {}
    for agent, values in kept.items():
        calibrated[agent] = _calibration(inp, agent).zscore(values)
    calibrated, clipped_z = robust.clip(calibrated)
    clipped.update({f"{agent}:clip_z": n for agent, n in clipped_z.items()})
    used = tuple(a for a in router.agents if a in calibrated)
    if not used:
        return FusionOutcome([None] * inp.n_items, (), {}, refused, clipped, (), decryptions)
    weights = router.weights(inp.features, list(used))
    fused = (router.fuse(inp.features, calibrated) if robust.is_plain else
             robust.combine(weights, torch.stack([calibrated[a] for a in used], dim=1),
                            feature_groups(inp.features) if robust.group_normalise else None))
    return FusionOutcome(
        rewards=[float(v) for v in fused.tolist()], agents_used=used, weights=_mean_weights(weights, used),
        refused=refused, clipped=clipped, uncalibrated=tuple(a for a in used if a not in inp.calibrations),
        decryptions=decryptions,
    )


# -- the three modes -----------------------------------------------------------------------------
def fuse_tls_only(router: RouterBase, inp: FusionInput, *, scores: ScoreRange,
                  robust: RobustFusion = NO_ROBUSTNESS) -> FusionOutcome:
    """tls-only: plaintext scores -> range check -> calibration -> ``robust`` / ``router.fuse``."""
    usable, refused = _usable(router, inp)
    return fuse_vectors(router, inp, plain_vectors(usable), scores, refused, decryptions=0, robust=robust)


def fuse_ckks(router: RouterBase, inp: FusionInput, *, scores: ScoreRange, key_owner: CKKSKeyOwner,
              audit: AuditTrail, actor: str = "server", robust: RobustFusion = NO_ROBUSTNESS) -> FusionOutcome:
    """ckks: decrypt per agent (audited) -> range check -> calibration -> ``robust`` / ``router.fuse``."""
    usable, refused = _usable(router, inp)
    vectors, decryptions, undecryptable = decrypt_vectors(usable, key_owner=key_owner, audit=audit,
                                                          round_id=inp.round_id, actor=actor)
    return fuse_vectors(router, inp, vectors, scores, {**refused, **undecryptable}, decryptions, robust)


def fuse_fused_only(router: RouterBase, inp: FusionInput, *, scores: ScoreRange, context: PublicContext,
                    keyholder: FusedDecryptor, audit: AuditTrail, actor: str = "server") -> FusionOutcome:
    """fused-only: input-only weights x ciphertexts, summed homomorphically; the key holder decrypts the sum."""
    if not isinstance(context, PublicContext):
        raise PrivacyModeError("fused-only: the server may hold only a PublicContext (no secret key)")
    usable, refused = _usable(router, inp)
    for agent, env in list(usable.items()):
        try:
            if env.kind != "ckks" or env.context_sha256 != context.sha256:
                raise IntegrityError()
            context.check_fresh(SealedVector(env.ciphertexts, env.length, context.sha256))
        except IntegrityError:
            refused[agent] = "ciphertext is not a fresh encryption under the key holder's public context"
            audit.record(actor, "decrypt.refused", {"round_id": inp.round_id, "agent": agent,
                                                    "envelope_sha256": env.sha256(), "reason": refused[agent]})
            del usable[agent]
    agents = [a for a in router.agents if a in usable]
    if not agents:
        return FusionOutcome([None] * inp.n_items, (), {}, refused, {}, (), 0)
    w = router.weights_for_fused_only(inp.features, agents)  # [n_items, k] float64
    cals = [_calibration(inp, a) for a in agents]
    std = torch.tensor([c.std for c in cals], dtype=torch.float64)
    mean = torch.tensor([c.mean for c in cals], dtype=torch.float64)
    effective = w / std  # homomorphic weights: calibration's scale folded in
    offset = (w * mean / std).sum(dim=1)  # calibration's shift, subtracted in plaintext
    low = (w * (scores.low - mean) / std).sum(dim=1)
    high = (w * (scores.high - mean) / std).sum(dim=1)
    sealed = [SealedVector(usable[a].ciphertexts, usable[a].length, context.sha256) for a in agents]
    try:
        fused_ct = context.weighted_sum(sealed, effective.T.tolist())
    except IntegrityError:
        raise FusionError("an agent's ciphertext does not parse under the key holder's public context") from None
    reply = keyholder.decrypt_fused(fused_ct, round_id=inp.round_id)
    if len(reply.values) != inp.n_items:
        raise FusionError(f"key holder returned {len(reply.values)} values for {inp.n_items} items")
    audit.record(actor, "decrypt.fused", {
        "round_id": inp.round_id, "agents": agents, "sealed_sha256": hashlib.sha256(fused_ct.to_bytes()).hexdigest(),
        "chunks": len(fused_ct.chunks), "keyholder_audit_index": reply.audit_index,
        "keyholder_decryptions": reply.decryptions,
    })
    rewards: list[float | None] = []
    outside = 0
    for j, value in enumerate(reply.values):
        fused = float(value) - float(offset[j])
        lo, hi = float(low[j]), float(high[j])
        if lo - RANGE_TOLERANCE <= fused <= hi + RANGE_TOLERANCE:
            rewards.append(min(max(fused, lo), hi))
            continue
        outside += 1
        rewards.append(None if scores.out_of_range == "refuse" else min(max(fused, lo), hi))
    return FusionOutcome(
        rewards=rewards, agents_used=tuple(agents), weights=_mean_weights(w, agents), refused=refused,
        clipped={"fused": outside} if outside else {},
        uncalibrated=tuple(a for a in agents if a not in inp.calibrations), decryptions=len(fused_ct.chunks),
    )
