"""Sealing, signing and opening score envelopes: round-trips, and every way a forger could try."""

from __future__ import annotations

import base64
import copy
import stat
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crypto import (
    CKKSKeyOwner,
    CKKSParameters,
    Envelope,
    IntegrityError,
    KeyFileError,
    MemoryNonceStore,
    ParameterError,
    SealedVector,
    SigningKey,
    load_public_context,
    open_envelope,
    seal_scores,
    sign_plain_scores,
    weighted_sum,
)

NOW = 1_800_000_000.0
SENDER = "mor://acme/client/hospital-a"
scores_st = st.lists(st.floats(min_value=-50, max_value=50, allow_nan=False), min_size=1, max_size=40)
HYPO = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def owner() -> CKKSKeyOwner:
    return CKKSKeyOwner.generate()


@pytest.fixture(scope="module")
def agent_key() -> SigningKey:
    return SigningKey.generate()


def _seal(owner: CKKSKeyOwner, key: SigningKey, scores: list[float], **kw: Any) -> Envelope:
    public = load_public_context(owner.public_context.serialized)
    args = {"signing_key": key, "sender": SENDER, "round_id": "r1", "task_id": "t1", "now": NOW} | kw
    return seal_scores(scores, public, **args)


def _open(env: Any, key: SigningKey, **kw: Any):  # noqa: ANN202
    args = {"verify_key": key.verify_key(), "nonces": MemoryNonceStore(), "now": NOW} | kw
    return open_envelope(env, **args)


@HYPO
@given(scores=scores_st)
def test_seal_open_decrypt_round_trip_within_precision(owner: CKKSKeyOwner, agent_key: SigningKey, scores) -> None:
    wire = _seal(owner, agent_key, scores).to_bytes()
    opened = _open(wire, agent_key, expected_sender=SENDER, expected_round="r1", expected_task="t1")
    assert opened.kind == "ckks" and opened.length == len(scores)
    assert opened.sealed is not None
    values = owner.decrypt(opened.sealed)
    assert len(values) == len(scores)
    assert max(abs(a - b) for a, b in zip(values, scores, strict=True)) <= owner.precision / 2 + 1e-6


@HYPO
@given(scores=scores_st)
def test_plain_envelope_round_trip_is_exact(agent_key: SigningKey, scores) -> None:
    env = sign_plain_scores(scores, signing_key=agent_key, sender=SENDER, round_id="r", task_id="t", now=NOW)
    opened = _open(env.to_dict(), agent_key, expected_kind="plain")
    assert opened.scores == tuple(scores) and opened.sealed is None


@HYPO
@given(data=st.binary(max_size=200), other=st.binary(max_size=200))
def test_sign_verify_round_trip_and_any_other_message_fails(data: bytes, other: bytes) -> None:
    key = SigningKey.generate()
    key.verify_key().verify(key.sign(data), data)
    if other != data:
        with pytest.raises(IntegrityError):
            key.verify_key().verify(key.sign(data), other)


def test_released_values_are_rounded_and_decryptions_counted() -> None:
    owner = CKKSKeyOwner.generate(precision=1e-2)
    values = owner.decrypt(owner.public_context.encrypt([0.123456, -1.98765]))
    assert values == [0.12, -1.99]
    long = owner.public_context.encrypt([0.5] * (owner.public_context.slots + 10))
    assert len(long.chunks) == 2
    assert owner.decrypt(long) == [0.5] * (owner.public_context.slots + 10)
    assert owner.decryptions == 3


TAMPERS = {
    "sender": lambda d: d.update(sender="mor://acme/client/hospital-b"),
    "round_id": lambda d: d.update(round_id="r2"),
    "task_id": lambda d: d.update(task_id="t2"),
    "nonce": lambda d: d.update(nonce="00" * 16),
    "timestamp": lambda d: d.update(timestamp=NOW + 1),
    "length": lambda d: d.update(length=d["length"] + 1),
    "context_sha256": lambda d: d.update(context_sha256="ab" * 32),
    "ciphertext": lambda d: d.update(ciphertexts=[base64.b64encode(
        base64.b64decode(d["ciphertexts"][0])[:-1] + b"\x00").decode()]),
    "ciphertext_dropped": lambda d: d.update(ciphertexts=[]),
    "signature": lambda d: d.update(signature=base64.b64encode(b"\x00" * 64).decode()),
    "kind": lambda d: d.update(kind="plain"),
    "extra_field": lambda d: d.update(note="hi"),
    "missing_field": lambda d: d.pop("nonce"),
    "bad_base64": lambda d: d.update(signature="!!!"),
}


@pytest.mark.parametrize("field", sorted(TAMPERS))
def test_tampered_envelope_is_rejected(owner: CKKSKeyOwner, agent_key: SigningKey, field: str) -> None:
    wire = _seal(owner, agent_key, [1.0, 2.0]).to_dict()
    _open(copy.deepcopy(wire), agent_key)  # the untouched envelope opens
    TAMPERS[field](wire)
    with pytest.raises(IntegrityError) as info:
        _open(wire, agent_key)
    assert str(info.value) == "integrity check failed"  # opaque: never says which check


def test_tampered_plain_score_is_rejected(agent_key: SigningKey) -> None:
    wire = sign_plain_scores([0.5, 0.25], signing_key=agent_key, sender=SENDER, round_id="r",
                             task_id="t", now=NOW).to_dict()
    wire["scores"] = [0.5, 0.75]
    with pytest.raises(IntegrityError):
        _open(wire, agent_key)


def test_wrong_key_stale_future_and_replay_are_rejected(owner: CKKSKeyOwner, agent_key: SigningKey) -> None:
    env = _seal(owner, agent_key, [1.0])
    with pytest.raises(IntegrityError):
        _open(env, SigningKey.generate())
    with pytest.raises(IntegrityError):
        _open(env, agent_key, now=NOW + 301)
    with pytest.raises(IntegrityError):
        _open(env, agent_key, now=NOW - 31)
    for want in ({"expected_sender": "mor://acme/client/x"}, {"expected_round": "r9"},
                 {"expected_task": "t9"}, {"expected_kind": "plain"}):
        with pytest.raises(IntegrityError):
            _open(env, agent_key, **want)
    nonces = MemoryNonceStore()
    _open(env, agent_key, nonces=nonces)
    with pytest.raises(IntegrityError):
        _open(env, agent_key, nonces=nonces, now=NOW + 5)


def test_forgery_does_not_burn_the_nonce(owner: CKKSKeyOwner, agent_key: SigningKey) -> None:
    env = _seal(owner, agent_key, [1.0])
    nonces = MemoryNonceStore()
    forged = env.to_dict() | {"signature": base64.b64encode(b"\x01" * 64).decode()}
    with pytest.raises(IntegrityError):
        _open(forged, agent_key, nonces=nonces)
    _open(env, agent_key, nonces=nonces)


def test_ciphertext_under_another_context_is_refused(owner: CKKSKeyOwner) -> None:
    stranger = CKKSKeyOwner.generate()
    foreign = stranger.public_context.encrypt([1.0, 2.0])
    with pytest.raises(IntegrityError):
        owner.decrypt(foreign)
    relabelled = SealedVector(foreign.chunks, foreign.length, owner.public_context.sha256)
    assert owner.decrypt(relabelled) != [1.0, 2.0]  # why the context hash is bound: garbage otherwise
    with pytest.raises(IntegrityError):
        owner.decrypt(SealedVector((b"junk",), 2, owner.public_context.sha256))
    with pytest.raises(IntegrityError):
        SealedVector.from_bytes(b'{"chunks": "x"}')


def test_secret_context_offered_as_public_is_refused(owner: CKKSKeyOwner, tmp_path) -> None:
    owner.save(tmp_path / "secret.ctx")
    with pytest.raises(ParameterError, match="secret key"):
        load_public_context((tmp_path / "secret.ctx").read_bytes())
    with pytest.raises(ParameterError):
        load_public_context(b"not a context")
    public = load_public_context(owner.public_context.serialized)
    assert len(public.serialized) < 1_000_000  # no Galois/relin keys travel
    assert not hasattr(public, "decrypt")


def test_secret_context_file_is_0600_and_never_overwritten(owner: CKKSKeyOwner, tmp_path) -> None:
    path = tmp_path / "keys" / "ckks.secret"
    owner.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        owner.save(path)
    reloaded = CKKSKeyOwner.load(path)
    assert reloaded.public_context.sha256 == owner.public_context.sha256
    assert reloaded.decrypt(owner.public_context.encrypt([3.0])) == [3.0]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (CKKSParameters(8192, (60, 60, 60, 60)), "exceeds the HE-standard limit of 218"),
        (CKKSParameters(4096, (40, 40, 40)), "limit of 109"),
        (CKKSParameters(16384, (60,) * 8), "limit of 438"),
        (CKKSParameters(8000, (60, 40, 60)), "must be one of"),
        (CKKSParameters(8192, (60, 60)), "at least 3 primes"),
        (CKKSParameters(8192, (60, 40, 40, 60), scale_bits=60), "scale_bits"),
    ],
)
def test_parameters_outside_the_he_standard_are_refused(params: CKKSParameters, message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        CKKSKeyOwner.generate(params)


def test_he_standard_limits_accept_the_edges() -> None:
    CKKSParameters(8192, (60, 49, 49, 60)).check()  # exactly 218 bits
    CKKSParameters(16384, (60, 40, 40, 40, 40, 40, 40, 40, 60)).check()


def test_weighted_sum_with_public_context_only(owner: CKKSKeyOwner, agent_key: SigningKey) -> None:
    public = load_public_context(owner.public_context.serialized)
    clients = [[0.5, -1.0, 2.0], [1.5, 0.0, -2.0], [0.25, 4.0, 1.0]]
    weights = [[0.2, 0.5, 0.3], [0.3, 0.25, 0.3], [0.5, 0.25, 0.4]]
    sealed = []
    for scores in clients:
        opened = _open(_seal(owner, agent_key, scores).to_bytes(), agent_key)
        assert opened.sealed is not None
        sealed.append(opened.sealed)
    fused = SealedVector.from_bytes(weighted_sum(public, sealed, weights).to_bytes())
    expected = [sum(w[j] * c[j] for w, c in zip(weights, clients, strict=True)) for j in range(3)]
    before = owner.decryptions
    assert owner.decrypt(fused) == pytest.approx(expected, abs=1e-4)
    assert owner.decryptions == before + 1
    with pytest.raises(ValueError, match="2 weight vectors"):
        weighted_sum(public, sealed, weights[:2])
    with pytest.raises(ValueError, match=r"weights\[1\]"):
        weighted_sum(public, sealed, [weights[0], [1.0], weights[2]])


def test_bad_scores_are_refused_before_sealing(owner: CKKSKeyOwner, agent_key: SigningKey) -> None:
    with pytest.raises(ValueError, match="empty"):
        _seal(owner, agent_key, [])
    with pytest.raises(ValueError, match=r"values\[1\]"):
        _seal(owner, agent_key, [1.0, float("nan")])
    with pytest.raises(ValueError, match="round_id"):
        _seal(owner, agent_key, [1.0], round_id="")


def test_nonce_store_forgets_only_expired_entries() -> None:
    store = MemoryNonceStore(clock=lambda: 100.0)
    assert store.check_and_add("a", "n1", 50.0)
    assert store.check_and_add("a", "n2", 150.0)
    assert store.check_and_add("b", "n1", 150.0)  # nonces are per sender
    assert not store.check_and_add("a", "n2", 150.0)
    assert store.purge() == 1 and len(store) == 2
