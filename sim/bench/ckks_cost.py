"""Section 2 — the cost of CKKS per score: time (seal + open, amortised) and bytes on the wire.

Baseline, in the same repeat: the same scores in a *plain* signed envelope (the ``tls-only``
payload: sign + verify, no encryption), so the ratio is what encryption adds on top of what
every mode already pays. Treatment: :func:`crypto.envelope.seal_scores` (encrypt + serialise
+ sign) then :func:`crypto.envelope.open_envelope` and the key owner's rounded decryption.

Parameter sets, both inside the HE standard's 128-bit table (checked by
:meth:`crypto.ckks.CKKSParameters.check`): the default N=8192, primes [60,40,40,60] (200 of
218 bits), and N=4096, primes [40,20,40] (100 of 109 bits; 2,048 slots, coarser scale). The
maximum decryption error of each is reported next to its cost.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

from tqdm import tqdm

from crypto.ckks import CKKSKeyOwner, CKKSParameters, PublicContext
from crypto.envelope import open_envelope, seal_scores, sign_plain_scores
from crypto.nonces import MemoryNonceStore
from crypto.signing import SigningKey
from sim.bench.stats import Figure, SectionResult, paired, timed

SECTION = "2 ckks"
SIZES = (64, 128, 256, 512, 1024, 2048, 4096)
SMOKE_SIZES = (64, 4096)
PARAMETERS = {
    "N8192": CKKSParameters(8192, (60, 40, 40, 60), 40),
    "N4096": CKKSParameters(4096, (40, 20, 40), 20),
}
SENDER = "mor://bench/client/ckks"


def _scores(n: int, rng: random.Random) -> list[float]:
    return [rng.uniform(-5.0, 5.0) for _ in range(n)]


def run(*, repeats: int, smoke: bool = False, seed: int = 0) -> SectionResult:
    """Measure every (parameter set, vector size); returns the figures and notes."""
    sizes: Sequence[int] = SMOKE_SIZES if smoke else SIZES
    params = {"N8192": PARAMETERS["N8192"]} if smoke else PARAMETERS
    rng = random.Random(seed)
    key = SigningKey.generate()
    verify = key.verify_key()
    figures: list[Figure] = []
    notes: list[str] = []
    bar = tqdm(total=len(params) * len(sizes) * repeats, desc="bench 2 ckks", unit="meas", disable=None)
    for label, parameters in params.items():
        owner = CKKSKeyOwner.generate(parameters)
        context = owner.public_context
        notes.append(f"{label}: public context {len(context.serialized):,} bytes, {context.slots} slots, "
                     f"{sum(parameters.coeff_mod_bit_sizes)}-bit modulus (128-bit limit "
                     f"{parameters.poly_modulus_degree}: checked)")
        for n in sizes:
            values = _scores(n, rng)
            plain_t, sealed_t = [], []
            counter = iter(range(10**9))

            def plain_round(values: list[float] = values, counter: Iterator[int] = counter) -> None:
                env = sign_plain_scores(values, signing_key=key, sender=SENDER, round_id="r",
                                        task_id=f"t{next(counter)}")
                open_envelope(env.to_bytes(), verify_key=verify, nonces=MemoryNonceStore())

            def sealed_round(values: list[float] = values, counter: Iterator[int] = counter,
                             context: PublicContext = context, owner: CKKSKeyOwner = owner) -> None:
                env = seal_scores(values, context, signing_key=key, sender=SENDER, round_id="r",
                                  task_id=f"t{next(counter)}")
                opened = open_envelope(env.to_bytes(), verify_key=verify, nonces=MemoryNonceStore())
                assert opened.sealed is not None
                owner.decrypt(opened.sealed)

            number = max(1, 256 // n) if not smoke else 1
            for _ in range(repeats):
                plain_t.append(timed(plain_round, number=number) / n * 1e6)
                sealed_t.append(timed(sealed_round, number=number) / n * 1e6)
                bar.update(1)
            plain_env = sign_plain_scores(values, signing_key=key, sender=SENDER, round_id="r", task_id="t")
            sealed_env = seal_scores(values, context, signing_key=key, sender=SENDER, round_id="r", task_id="t")
            sealed = open_envelope(sealed_env, verify_key=verify, nonces=MemoryNonceStore()).sealed
            assert sealed is not None
            opened = owner.decrypt(sealed)
            error = max(abs(a - b) for a, b in zip(opened, values, strict=True))
            plain_bytes, sealed_bytes = len(plain_env.to_bytes()), len(sealed_env.to_bytes())
            figures.append(paired(SECTION, f"{label} n={n} seal+open", "us/score", sealed_t, "plain sign+verify",
                                  plain_t, max_abs_error=error, ciphertexts=len(sealed_env.ciphertexts)))
            figures.append(paired(SECTION, f"{label} n={n} wire", "B/score", [sealed_bytes / n], "plain envelope",
                                  [plain_bytes / n], envelope_bytes=sealed_bytes))
    bar.close()
    return SectionResult(figures, notes)
