"""Agents simulated by threads that answer rounds straight through a real :class:`StateStore`.

What the HTTP service would do for them, minus HTTP: take the agent's task from the store,
score every item, seal the vector under the server's public CKKS context (a real signed
envelope), verify it and store it through the service's group commit (:mod:`server.ingest`:
audit entry, signed receipt, one transaction, the coordinator woken). Used where a
section measures the round/fusion path without the network (section 6); the network is
measured with real processes in sections 1, 4 and 5.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from crypto.ckks import CKKSKeyOwner
from crypto.envelope import open_envelope, seal_scores
from crypto.signing import SigningKey
from server.audit_trail import AuditLogTrail
from server.fusion import ScoreRange
from server.ingest import DeferredNonce, GroupCommit, Submission
from server.privacy_mode import privacy_mode_for
from server.rounds import FeatureFn, RoundCoordinator, RoundPolicy
from server.router import RouterBase
from server.state import StateStore
from sim.bench.scorers import ScoreFn

AGENT_POLL_S = 0.01


class ThreadAgents:
    """A state store, an audit log, a CKKS key owner, and one answering thread per agent."""

    def __init__(self, directory: Path, agents: Sequence[str], scorers: Sequence[ScoreFn], *,
                 owner: CKKSKeyOwner | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.agents = tuple(agents)
        self.scorers = dict(zip(self.agents, scorers, strict=True))
        self.state = StateStore(f"sqlite:///{directory / 'state.db'}")
        self.audit = AuditLogTrail.open(directory / "audit", SigningKey.generate(), origin="mor://bench/server")
        self.owner = owner or CKKSKeyOwner.generate()
        self.keys = {a: SigningKey.generate() for a in self.agents}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        now = time.time()
        for agent in self.agents:
            key_b64 = base64.b64encode(self.keys[agent].verify_key().raw()).decode("ascii")
            self.state.upsert_agent(agent, signing_key_b64=key_b64, architecture="bench", epsilon=1.0, delta=1e-6,
                                    privacy_report={}, now=now)
        self.privacy = privacy_mode_for("ckks", scores=ScoreRange(-100.0, 100.0), audit=self.audit,
                                        key_owner=self.owner)
        self.ingest = GroupCommit(state=self.state, audit=self.audit, signing_key=SigningKey.generate())

    def coordinator(self, router: RouterBase, features: FeatureFn, *, quorum: int, deadline_s: float = 60.0,
                    poll_interval_s: float = 0.1) -> RoundCoordinator:
        policy = RoundPolicy(quorum=quorum, deadline_s=deadline_s, poll_interval_s=poll_interval_s)
        return RoundCoordinator(state=self.state, audit=self.audit, privacy=self.privacy, router=router,
                                policy=policy, features=features, show_progress=False)

    def _loop(self, agent: str) -> None:
        score = self.scorers[agent]
        key = self.keys[agent]
        while not self._stop.is_set():
            self.state.touch_agent(agent, time.time())
            task = self.state.next_task(agent, time.time())
            if task is None:
                time.sleep(AGENT_POLL_S)
                continue
            prompts = task.payload["prompts"]
            values = [score(prompts[i["prompt_index"]]["question"], i["response"]) for i in task.payload["items"]]
            env = seal_scores(values, self.owner.public_context, signing_key=key, sender=agent,
                              round_id=task.round_id, task_id=task.task_id)
            nonce = DeferredNonce(self.state)
            opened = open_envelope(env, verify_key=key.verify_key(), nonces=nonce, expected_sender=agent,
                                   expected_round=task.round_id, expected_task=task.task_id)
            assert nonce.seen is not None
            self.ingest.commit(Submission(agent=agent, task=task, envelope=env, opened=opened, nonce=nonce.seen,
                                          clipped=0, now=time.time()))

    def start(self) -> ThreadAgents:
        for agent in self.agents:
            thread = threading.Thread(target=self._loop, args=(agent,), name=f"agent-{agent}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        self.audit.close()

