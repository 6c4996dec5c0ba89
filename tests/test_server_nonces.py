"""The server's nonce table stays bounded over a long run, and replays inside the window stay refused.

Why: every accepted envelope leaves a nonce row behind. Without purging, a server that runs for
months grows that table (and every insert's index) forever; with a careless purge, a replay
inside the freshness window would slip through. Real Ed25519-signed envelopes, the real
SQLite store, a controlled clock.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from crypto.envelope import open_envelope, sign_plain_scores
from crypto.errors import IntegrityError
from crypto.signing import SigningKey
from server.state import StateStore

MAX_AGE_S = 300.0  # the policy's envelope freshness window
STEP_S = 10.0  # one envelope every 10 s of simulated time
PURGE_EVERY_S = 60.0


def test_nonce_table_stays_bounded_and_replays_in_the_window_are_refused(tmp_path: Path) -> None:
    now = [1_000_000.0]
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}", clock=lambda: now[0], nonce_purge_every_s=PURGE_EVERY_S)
    key = SigningKey.generate()
    vk = key.verify_key()
    sizes: list[int] = []
    previous = None
    for i in range(720):  # two hours of simulated traffic
        env = sign_plain_scores([0.5], signing_key=key, sender="mor://t/client/a", round_id=f"score-{i}",
                                task_id=f"t-{i}", now=now[0])
        open_envelope(env, verify_key=vk, nonces=store, max_age_s=MAX_AGE_S, now=now[0])
        with pytest.raises(IntegrityError):  # the same envelope again, at once
            open_envelope(env, verify_key=vk, nonces=store, max_age_s=MAX_AGE_S, now=now[0])
        if previous is not None:  # the one before, still inside its window
            with pytest.raises(IntegrityError):
                open_envelope(previous, verify_key=vk, nonces=store, max_age_s=MAX_AGE_S, now=now[0])
        previous = env
        sizes.append(store.count_nonces())
        now[0] += STEP_S

    bound = (MAX_AGE_S + PURGE_EVERY_S) / STEP_S + 1  # one window plus one purge interval of envelopes
    assert max(sizes) <= bound, max(sizes)
    assert sizes[-1] >= MAX_AGE_S / STEP_S  # but nothing inside the window was forgotten
