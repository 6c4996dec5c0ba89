"""CKKS sealing of score vectors (TenSEAL), kept behind a small API.

Who holds what decides what can leak, so the types follow the parties:

* :class:`CKKSKeyOwner` (server, or the key holder in fused-only mode) holds the secret key.
  It is the only object that can decrypt, and it releases values rounded to a fixed
  precision and counts every decryption: SEAL's CKKS is only IND-CPA, and exact decryption
  results handed to someone holding the ciphertext leak the secret key (Li–Micciancio, 2021).
* :class:`PublicContext` is what the owner publishes: public key only — no secret key, and no
  Galois or relinearisation keys (elementwise plain-weight sums need none; they would only
  make it 4x larger). Agents encrypt with it; the server sums with it in fused-only mode.
* :class:`SealedVector` is the ciphertext(s) of one score vector plus the length and the
  SHA-256 of the public context it was made under, so a ciphertext is never decrypted under
  the wrong key (that "works" and returns garbage).

Every context, generated or loaded, is linted against the HE security standard (128-bit,
classical) before use.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tenseal as ts
import tenseal.sealapi  # noqa: F401  (registers seal::Modulus so parameters can be read back)

from crypto.canonical import canonical_json
from crypto.errors import IntegrityError, KeyFileError, ParameterError
from crypto.signing import write_private_file

# HomomorphicEncryption.org standard, 128-bit classical security, ternary secrets:
# the largest total coefficient modulus (bits) allowed for each ring degree.
HE_STANDARD_MAX_MODULUS_BITS: dict[int, int] = {2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}
DEFAULT_PRECISION = 1e-4
MAX_CIPHERTEXT_BYTES = 8 * 1024 * 1024
MAX_CHUNKS = 256


@dataclass(frozen=True)
class CKKSParameters:
    """Ring degree, coefficient-modulus primes (bits) and scale (bits) of a CKKS context."""

    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 40, 40, 60)
    scale_bits: int = 40

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2

    def check(self) -> None:
        """Raise :class:`ParameterError` unless these parameters are safe and usable."""
        n, primes = self.poly_modulus_degree, self.coeff_mod_bit_sizes
        limit = HE_STANDARD_MAX_MODULUS_BITS.get(n)
        if limit is None:
            allowed = ", ".join(str(k) for k in HE_STANDARD_MAX_MODULUS_BITS)
            raise ParameterError(f"poly_modulus_degree={n}: must be one of {allowed}")
        if len(primes) < 3:
            raise ParameterError(
                f"coeff_mod_bit_sizes={list(primes)}: need at least 3 primes (one multiplication level)"
            )
        if any(not 20 <= bits <= 60 for bits in primes):
            raise ParameterError(f"coeff_mod_bit_sizes={list(primes)}: each prime must be 20..60 bits")
        if sum(primes) > limit:
            raise ParameterError(
                f"total coefficient modulus {sum(primes)} bits exceeds the HE-standard limit of {limit} bits "
                f"for N={n} (128-bit security)"
            )
        if not 20 <= self.scale_bits < primes[0]:
            raise ParameterError(f"scale_bits={self.scale_bits}: must be >= 20 and below the first prime ({primes[0]})")


def _parameters_of(context: ts.Context) -> CKKSParameters:
    try:
        parms = context.seal_context().data.key_context_data().parms()
        if parms.scheme().name != "CKKS":
            raise ParameterError("not a CKKS context")
        scale = context.global_scale
        found = CKKSParameters(
            poly_modulus_degree=int(parms.poly_modulus_degree()),
            coeff_mod_bit_sizes=tuple(int(q.bit_count()) for q in parms.coeff_modulus()),
            scale_bits=round(math.log2(scale)) if scale > 0 else 0,
        )
    except ParameterError:
        raise
    except Exception as exc:  # noqa: BLE001 - TenSEAL raises bare ValueError/RuntimeError
        raise ParameterError(f"cannot read CKKS parameters: {exc}") from None
    found.check()
    return found


@dataclass(frozen=True)
class SealedVector:
    """The ciphertexts of one score vector (split every ``slots`` values), opaque to holders."""

    chunks: tuple[bytes, ...]
    length: int
    context_sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "chunks": [base64.b64encode(c).decode("ascii") for c in self.chunks],
            "context_sha256": self.context_sha256,
            "length": self.length,
        }

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_dict())

    @classmethod
    def from_dict(cls, data: Any) -> SealedVector:
        """Parse a received dict; any framing problem is an :class:`IntegrityError`."""
        try:
            if not isinstance(data, dict) or set(data) != {"chunks", "context_sha256", "length"}:
                raise ValueError
            chunks, length, digest = data["chunks"], data["length"], data["context_sha256"]
            if not isinstance(chunks, list) or not 1 <= len(chunks) <= MAX_CHUNKS:
                raise ValueError
            if type(length) is not int or length < 1 or not isinstance(digest, str) or len(digest) != 64:
                raise ValueError
            decoded = tuple(base64.b64decode(c, validate=True) for c in chunks)
            if any(len(c) > MAX_CIPHERTEXT_BYTES for c in decoded):
                raise ValueError
        except (ValueError, TypeError, binascii.Error):
            raise IntegrityError() from None
        return cls(decoded, length, digest)

    @classmethod
    def from_bytes(cls, data: bytes) -> SealedVector:
        try:
            parsed = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise IntegrityError() from None
        return cls.from_dict(parsed)


def _load_chunks(context: ts.Context, context_sha256: str, slots: int, sealed: SealedVector) -> list[ts.CKKSVector]:
    """Deserialise ``sealed`` under ``context``; anything unexpected is an IntegrityError."""
    expected_chunks = -(-sealed.length // slots)
    if sealed.context_sha256 != context_sha256 or len(sealed.chunks) != expected_chunks:
        raise IntegrityError()
    vectors = []
    for index, chunk in enumerate(sealed.chunks):
        try:
            vector = ts.ckks_vector_from(context, chunk)
            size = vector.size()
        except Exception:  # noqa: BLE001 - any parse failure is the same opaque error
            raise IntegrityError() from None
        expected = slots if index < expected_chunks - 1 else sealed.length - slots * (expected_chunks - 1)
        if size != expected:
            raise IntegrityError()
        vectors.append(vector)
    return vectors


def _check_fresh(vectors: Sequence[ts.CKKSVector], parameters: CKKSParameters) -> None:
    """Every chunk is what an honest ``encrypt`` under these parameters yields; else IntegrityError.

    A fresh ciphertext has two polynomials, every coefficient-modulus prime but the special one,
    NTT form and exactly the context's scale. Anything else — a product, a rescaled or
    foreign-scale ciphertext, a transparent one — either fails the homomorphic sum of a whole
    round (a scale mismatch aborts it) or hides nothing, so it is refused at the door.
    """
    scale = float(2 ** parameters.scale_bits)
    levels = len(parameters.coeff_mod_bit_sizes) - 1
    for vector in vectors:
        try:
            parts = vector.data.ciphertext()
            fresh = all(c.size() == 2 and c.coeff_modulus_size() == levels and c.is_ntt_form() and
                        not c.is_transparent() and c.scale == scale for c in parts)
        except Exception:  # noqa: BLE001 - any failure to inspect is the same opaque error
            raise IntegrityError() from None
        if not fresh:
            raise IntegrityError()


def _check_values(values: Sequence[float], what: str) -> list[float]:
    out = [float(v) for v in values]
    if not out:
        raise ValueError(f"{what}: empty vector")
    for index, value in enumerate(out):
        if not math.isfinite(value):
            raise ValueError(f"{what}[{index}]: {value} is not finite")
    return out


class PublicContext:
    """A CKKS context that can encrypt and add but never decrypt. Build with :func:`load_public_context`."""

    def __init__(self, context: ts.Context, serialized: bytes, parameters: CKKSParameters) -> None:
        self._context = context
        self.serialized = serialized
        self.parameters = parameters
        self.sha256 = hashlib.sha256(serialized).hexdigest()

    @property
    def slots(self) -> int:
        return self.parameters.slots

    def encrypt(self, values: Sequence[float]) -> SealedVector:
        """Encrypt a score vector; longer than ``slots`` values go into several ciphertexts."""
        checked = _check_values(values, "values")
        chunks = tuple(
            ts.ckks_vector(self._context, checked[start : start + self.slots]).serialize()
            for start in range(0, len(checked), self.slots)
        )
        return SealedVector(chunks, len(checked), self.sha256)

    def check_fresh(self, sealed: SealedVector) -> None:
        """Refuse (IntegrityError) a vector that is not a fresh encryption under this context.

        Run on every member's envelope before the server signs a receipt for it, so a signed but
        malformed ciphertext is refused at submission instead of voiding a whole round at fusion.
        """
        _check_fresh(_load_chunks(self._context, self.sha256, self.slots, sealed), self.parameters)

    def weighted_sum(self, vectors: Sequence[SealedVector], weights: Sequence[Sequence[float]]) -> SealedVector:
        """``sum_i weights[i] * vectors[i]`` slot by slot, homomorphically (fused-only mode)."""
        if not vectors or len(vectors) != len(weights):
            raise ValueError(f"weighted_sum: {len(vectors)} vectors but {len(weights)} weight vectors")
        length = vectors[0].length
        rows = [_check_values(w, f"weights[{i}]") for i, w in enumerate(weights)]
        for i, row in enumerate(rows):
            if len(row) != length:
                raise ValueError(f"weights[{i}]: {len(row)} weights for a vector of length {length}")
        if any(v.length != length for v in vectors):
            raise IntegrityError()
        loaded = [_load_chunks(self._context, self.sha256, self.slots, v) for v in vectors]
        for chunks_of_one in loaded:
            _check_fresh(chunks_of_one, self.parameters)
        chunks = []
        for c in range(len(loaded[0])):
            lo = c * self.slots
            total = None
            for client, row in zip(loaded, rows, strict=True):
                term = client[c] * row[lo : lo + client[c].size()]
                total = term if total is None else total + term
            assert total is not None
            chunks.append(total.serialize())
        return SealedVector(tuple(chunks), length, self.sha256)


def load_public_context(data: bytes) -> PublicContext:
    """Load a published context; refuse one carrying a secret key or outside the HE standard."""
    try:
        context = ts.context_from(data)
    except Exception:  # noqa: BLE001
        raise ParameterError("not a serialised TenSEAL context") from None
    if context.is_private() or context.has_secret_key():
        raise ParameterError("context carries a secret key: refusing it where only a public context is allowed")
    return PublicContext(context, bytes(data), _parameters_of(context))


def weighted_sum(
    context: PublicContext, vectors: Sequence[SealedVector], weights: Sequence[Sequence[float]]
) -> SealedVector:
    """Module-level spelling of :meth:`PublicContext.weighted_sum`."""
    return context.weighted_sum(vectors, weights)


class CKKSKeyOwner:
    """Holds the CKKS secret key; decrypts with rounding and counts every decryption."""

    def __init__(self, context: ts.Context, *, precision: float = DEFAULT_PRECISION) -> None:
        if not context.is_private():
            raise ParameterError("a key owner needs a context with its secret key")
        if not (math.isfinite(precision) and 0 < precision <= 1):
            raise ParameterError(f"precision={precision}: must be in (0, 1]")
        self.parameters = _parameters_of(context)
        self.precision = precision
        self._context = context
        self._lock = threading.Lock()
        self._decryptions = 0
        public_bytes = context.serialize(
            save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False
        )
        self._public = load_public_context(public_bytes)

    @classmethod
    def generate(
        cls, parameters: CKKSParameters | None = None, *, precision: float = DEFAULT_PRECISION
    ) -> CKKSKeyOwner:
        params = parameters or CKKSParameters()
        params.check()
        context = ts.context(
            ts.SCHEME_TYPE.CKKS,
            poly_modulus_degree=params.poly_modulus_degree,
            coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
        )
        context.global_scale = 2.0**params.scale_bits
        return cls(context, precision=precision)

    @classmethod
    def load(cls, path: str | Path, *, precision: float = DEFAULT_PRECISION) -> CKKSKeyOwner:
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise KeyFileError(f"{path}: cannot read CKKS secret context: {exc.strerror}") from None
        try:
            context = ts.context_from(data)
        except Exception:  # noqa: BLE001
            raise KeyFileError(f"{path}: not a serialised TenSEAL context") from None
        if not context.is_private():
            raise KeyFileError(f"{path}: context has no secret key")
        return cls(context, precision=precision)

    def save(self, path: str | Path, *, overwrite: bool = False) -> None:
        """Write the secret context 0600 (refuses to overwrite unless asked)."""
        secret = self._context.serialize(save_secret_key=True, save_galois_keys=False, save_relin_keys=False)
        write_private_file(Path(path), secret, overwrite=overwrite)

    @property
    def public_context(self) -> PublicContext:
        return self._public

    @property
    def decryptions(self) -> int:
        """Ciphertexts decrypted so far (one per chunk): rotate keys when this grows large."""
        return self._decryptions

    def decrypt(self, sealed: SealedVector) -> list[float]:
        """Decrypt and round to ``precision`` (never releases raw CKKS output)."""
        vectors = _load_chunks(self._context, self._public.sha256, self._public.slots, sealed)
        values: list[float] = []
        for vector in vectors:
            values.extend(vector.decrypt())
            with self._lock:
                self._decryptions += 1
        p = self.precision
        digits = max(0, -math.floor(math.log10(p))) + 2
        return [round(round(v / p) * p, digits) for v in values]
