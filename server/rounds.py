"""The round coordinator: one batch of prompts x responses -> one scoring task per live agent -> one reward.

A round is the unit the agents see. The coordinator writes the round and its tasks to the
:class:`~server.state.StateStore` (the seam with the HTTP service: agents long-poll the tasks,
the service verifies and stores their envelopes), then waits until every agent asked has
answered or the policy deadline passes — woken by the service's commits
(:class:`server.round_events.RoundEvents`), not by a timer. Stragglers are not waited for: after the
deadline the service refuses their envelopes (410) and the round is closed with the tasks
still open marked expired. Dropouts simply never answer.

Quorum is checked twice: before issuing tasks (enough *live* agents?) and after the deadline
(enough *usable* answers?). Below quorum the round is closed as ``skipped``, audited with its
reason, and returns no rewards: it is never fused. Above it, the router renormalises over
the agents that answered (see :mod:`server.router.base`).

Each signature is verified once: an envelope the service verified in this process is handed
over in memory (its digest must equal the stored row's). Any other stored envelope (written
before a restart, or by another process) is verified here — signature by the key registered
at enrolment, sender/round/task binding, stored digest — before anything is decrypted: the
store is a file, and a row edited behind the service's back must not reach the reward.

Audit entries (actor = the server): ``round.opened`` (with every task issued),
``round.fused`` / ``round.collected`` (agents answered and used, envelope digests, weights),
``round.skipped`` (reason); the fusion layer adds ``decrypt.agent`` / ``decrypt.fused`` (and, for
fused-only public rounds, ``keyholder.agent_decryption`` per request to the key holder).

Calibrate and router rounds (public data) need per-agent vectors. Under fused-only they run
only when the policy opts in (``privacy.public_rounds_per_agent``): the key holder then
decrypts each agent's vector after checking the agent's own signature on the round id (whose
prefix, ``calibrate-``/``router-``/``score-``, is the round kind) — see :mod:`server.keyholder.public_rounds`.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from tqdm import tqdm

from corpus.types import Prompt
from crypto.envelope import Envelope
from crypto.errors import CryptoError
from crypto.signing import VerifyKey
from server.errors import FusionError, KeyHolderError, PrivacyModeError
from server.fusion import FusionInput, check_range
from server.privacy_mode import PrivacyModeBehaviour
from server.quarantine import Quarantine
from server.router.base import RouterBase
from server.router.membership import admit_members
from server.services import AuditTrail
from server.state import StateStore
from wire.calibration import Calibration
from wire.messages import PromptPayload, TaskItem, TaskKind, TaskPayload

log = logging.getLogger(__name__)
FeatureFn = Callable[[Sequence[Prompt]], torch.Tensor]
RoundStatus = Literal["fused", "collected", "skipped"]


@dataclass(frozen=True)
class RoundPolicy:
    """The policy's round rules: how many agents must answer, how long to wait, who counts as live."""

    quorum: int
    deadline_s: float
    online_window_s: float = 120.0
    poll_interval_s: float = 0.5  # store re-read while waiting; this process's answers wake the coordinator at once

    def __post_init__(self) -> None:
        if isinstance(self.quorum, bool) or not isinstance(self.quorum, int) or self.quorum < 1:
            raise FusionError(f"round policy: quorum={self.quorum!r} must be an integer >= 1")
        for name in ("deadline_s", "online_window_s", "poll_interval_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise FusionError(f"round policy: {name}={value!r} must be a finite number > 0")


@dataclass(frozen=True)
class RoundResult:
    """What one round produced. ``rewards`` (score rounds) or ``vectors`` (calibrate/router rounds)."""

    round_id: str
    kind: TaskKind
    status: RoundStatus
    agents_asked: tuple[str, ...]
    agents_answered: tuple[str, ...]
    agents_used: tuple[str, ...] = ()
    rewards: list[float | None] | None = None
    vectors: dict[str, list[float]] | None = None
    weights: dict[str, float] = field(default_factory=dict)
    envelope_sha256: dict[str, str] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    reason: str | None = None

    @property
    def skipped(self) -> bool:
        return self.status == "skipped"


SEND_MAX_PIXELS = 1024 * 1024  # members refuse larger images by default ([limits] max_image_pixels)


def prompt_payload(prompt: Prompt) -> PromptPayload:
    """The wire form of a prompt: its image as base64 PNG, downscaled (aspect kept) to ``SEND_MAX_PIXELS``.

    A consortium's own scans can be any size; a member's reward model resizes to its own input
    anyway, and members refuse oversized images, so a 4,000-pixel X-ray is sent at ~1 megapixel.
    """
    image = prompt.image
    if image.width * image.height > SEND_MAX_PIXELS:
        scale = (SEND_MAX_PIXELS / (image.width * image.height)) ** 0.5
        image = image.resize((max(1, int(image.width * scale)), max(1, int(image.height * scale))))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return PromptPayload(prompt_id=prompt.prompt_id, question=prompt.question,
                         image_png_b64=base64.b64encode(buffer.getvalue()).decode("ascii"))


def _items(items: Sequence[TaskItem | tuple[int, str]], n_prompts: int) -> list[TaskItem]:
    out = [i if isinstance(i, TaskItem) else TaskItem(prompt_index=i[0], response=i[1]) for i in items]
    if not out:
        raise FusionError("a round needs at least one item")
    for k, item in enumerate(out):
        if not 0 <= item.prompt_index < n_prompts:
            raise FusionError(f"items[{k}].prompt_index={item.prompt_index}: only {n_prompts} prompts")
    return out


def live_agents(state: StateStore, now: float, online_window_s: float) -> list[str]:
    """Enrolled agents seen within ``online_window_s`` of ``now``."""
    return [a["identity"] for a in state.list_agents()
            if a["last_seen"] is not None and now - a["last_seen"] <= online_window_s]


def agent_calibration(row: dict[str, Any]) -> Calibration | None:
    """An agent row's stored calibration, or None (missing or unusable: logged)."""
    if not row.get("calibration"):
        return None
    try:
        data = json.loads(row["calibration"])
        return Calibration(float(data["mean"]), float(data["std"]))
    except (ValueError, KeyError, TypeError):
        log.warning("agent %s: unusable calibration %r, treated as uncalibrated", row["identity"], row["calibration"])
        return None


class RoundCoordinator:
    """Issues rounds through the state store and fuses what comes back (see the module docstring)."""

    def __init__(self, *, state: StateStore, audit: AuditTrail, privacy: PrivacyModeBehaviour, router: RouterBase,
                 policy: RoundPolicy, features: FeatureFn | None = None, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep, new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
                 actor: str = "server", show_progress: bool = True, quarantine: Quarantine | None = None) -> None:
        self.state, self.audit, self.privacy, self.router, self.policy = state, audit, privacy, router, policy
        self.quarantine = quarantine
        self.clock, self.sleep, self.new_id, self.actor, self.show_progress = clock, sleep, new_id, actor, show_progress
        self._features = features
        self._feature_cache: dict[str, torch.Tensor] = {}

    # -- helpers -----------------------------------------------------------------------------------
    def live_agents(self, now: float | None = None) -> list[str]:
        """Enrolled agents seen within the policy's online window (and not quarantined)."""
        now = self.clock() if now is None else now
        live = live_agents(self.state, now, self.policy.online_window_s)
        return live if self.quarantine is None else self.quarantine.admitted(live, now)

    def set_router(self, router: RouterBase) -> None:
        """Swap the router (after a fit); later rounds fuse with it."""
        self.router = router

    def _admit(self, live: list[str]) -> tuple[list[str], list[str]]:
        """Score rounds: a late member joins a uniform router; one the router cannot weigh is not asked.

        See :mod:`server.router.membership`. Returns (members to ask, live members left out).
        """
        router, added, left_out = admit_members(self.router, live)
        if added:
            self.router = router
            self._record("router.updated", {"kind": router.kind, "added": added, "digest": router.digest()})
            log.info("members %s joined the uniform router", added)
        return [a for a in live if a not in left_out], left_out

    def prompt_features(self, prompts: Sequence[Prompt]) -> torch.Tensor:
        """Router features per prompt, cached by prompt id (prompts recur across GRPO epochs)."""
        missing = [p for p in prompts if p.prompt_id not in self._feature_cache]
        if missing:
            if self._features is None:
                from server.router.features import prompt_features

                self._features = prompt_features
            for p, row in zip(missing, self._features(missing), strict=True):
                self._feature_cache[p.prompt_id] = row
        return torch.stack([self._feature_cache[p.prompt_id] for p in prompts])

    def _record(self, action: str, data: dict[str, Any]) -> None:
        self.audit.record(self.actor, action, data)

    def _skip(self, round_id: str, kind: TaskKind, asked: Sequence[str], answered: Sequence[str], reason: str,
              digests: dict[str, str] | None = None, refused: dict[str, str] | None = None) -> RoundResult:
        outcome = {"reason": reason, "agents_asked": list(asked), "agents_answered": list(answered),
                   "envelope_sha256": digests or {}, "refused": refused or {}}
        self.state.close_round(round_id, status="skipped", outcome=outcome)
        self._record("round.skipped", {"round_id": round_id, "kind": kind, **outcome})
        log.warning("round %s skipped: %s", round_id, reason)
        return RoundResult(round_id, kind, "skipped", tuple(asked), tuple(answered), envelope_sha256=digests or {},
                           refused=refused or {}, reason=reason)

    # -- waiting and reading -------------------------------------------------------------------------
    def _wait(self, round_id: str, asked: Sequence[str], deadline: float) -> None:
        """Until every agent asked has answered or the deadline: woken by the API's commits, not by a timer.

        The store is re-read only when the wait times out (every ``poll_interval_s``): answers
        committed by another process are still seen, the last look before the deadline is the
        store's, and ``sleep`` (the trainer's raises once the process is stopping) is called.
        """
        bar = tqdm(total=len(asked), desc=f"round {round_id[:12]}", unit="agent", leave=False,
                   disable=None if self.show_progress else True)
        events, wanted = self.state.events, set(asked)
        try:
            while True:
                remaining = max(0.0, deadline - self.clock())
                answered = events.wait_answers(round_id, wanted, min(self.policy.poll_interval_s, remaining))
                if not answered >= wanted:
                    answered |= set(self.state.answered_digests(round_id))
                bar.update(len(answered & wanted) - bar.n)
                if answered >= wanted or self.clock() >= deadline:
                    return
                self.sleep(0.0)  # the trainer's sleep raises when the process is stopping
        finally:
            bar.close()

    def _verified(self, round_id: str, asked: Sequence[str], tasks: dict[str, str]
                  ) -> tuple[dict[str, Envelope], dict[str, str], dict[str, str]]:
        """Stored envelopes: (agent -> envelope, agent -> digest, agent -> refusal reason).

        An envelope the API verified in this process and handed over (same digest as the stored
        row) is used as it is: its signature was checked once, on arrival. Any other stored row
        (written before a restart, or by another process) is verified here: the store is a file,
        and a row edited behind the service's back must not reach the reward.
        """
        envelopes: dict[str, Envelope] = {}
        digests: dict[str, str] = {}
        refused: dict[str, str] = {}
        stored = self.state.answered_digests(round_id)
        unverified = []
        for agent, digest in stored.items():
            digests[agent] = digest
            handed = self.state.events.take_verified(tasks[agent], digest) if agent in tasks else None
            if handed is not None and handed.agent == agent:
                envelopes[agent] = handed.envelope
            else:
                unverified.append(agent)
        if not unverified:
            return envelopes, digests, refused
        for row in self.state.submissions_for_round(round_id):
            agent = row["agent"]
            if agent not in unverified:
                continue
            digests[agent] = row["envelope_sha256"]
            agent_row = self.state.agent(agent)
            try:
                if agent not in asked or agent_row is None:
                    raise ValueError("not asked in this round")
                env = Envelope.from_dict(row["envelope"])
                key = VerifyKey.from_bytes(base64.b64decode(agent_row["signing_key_b64"]))
                key.verify(env.signature, env.signed_bytes())
                if (env.sender, env.round_id, env.task_id) != (agent, round_id, tasks[agent]) or \
                        env.sha256() != row["envelope_sha256"]:
                    raise ValueError("binding mismatch")
            except (CryptoError, ValueError, KeyError):
                refused[agent] = "stored envelope failed verification"
                continue
            envelopes[agent] = env
        return envelopes, digests, refused

    # -- the round ---------------------------------------------------------------------------------
    def run_round(self, kind: TaskKind, prompts: Sequence[Prompt], items: Sequence[TaskItem | tuple[int, str]], *,
                  now: float | None = None) -> RoundResult:
        """Issue one task per live agent, wait for quorum or deadline, then fuse (score) or collect."""
        round_id = f"{kind}-{self.new_id()}"
        self.state.events.open_round(round_id)  # before its tasks exist: no answer can be missed
        try:
            result = self._run_round(round_id, kind, prompts, items, now=now)
        finally:
            self.state.events.close_round(round_id)
        if self.quarantine is not None:
            self.quarantine.observe(result.round_id, result.agents_answered, result.agents_used, result.refused,
                                    self.clock())
        return result

    def _run_round(self, round_id: str, kind: TaskKind, prompts: Sequence[Prompt],
                   items: Sequence[TaskItem | tuple[int, str]], *, now: float | None) -> RoundResult:
        if kind != "score" and not self.privacy.collects_public_rounds:
            raise PrivacyModeError(f"{self.privacy.name}: a {kind!r} round needs per-agent scores, which this mode "
                                   "never decrypts unless the policy sets privacy.public_rounds_per_agent = true")
        task_items = _items(items, len(prompts))
        now = self.clock() if now is None else now
        deadline = now + self.policy.deadline_s
        asked, not_weighed = self._admit(self.live_agents(now)) if kind == "score" else (self.live_agents(now), [])
        payload = TaskPayload(kind=kind, prompts=[prompt_payload(p) for p in prompts], items=task_items).model_dump()
        enough = len(asked) >= self.policy.quorum
        tasks = {agent: f"{round_id}-{self.new_id()[:12]}" for agent in asked} if enough else {}
        self.state.create_round(round_id, kind=kind, n_items=len(task_items), deadline=deadline, now=now,
                                task_payloads={a: (t, payload) for a, t in tasks.items()})
        self._record("round.opened", {"round_id": round_id, "kind": kind, "n_prompts": len(prompts),
                                      "n_items": len(task_items), "deadline": deadline, "quorum": self.policy.quorum,
                                      "tasks": tasks, **({"not_weighed": not_weighed} if not_weighed else {})})
        if not enough:
            return self._skip(round_id, kind, asked, [], f"{len(asked)} live agents, quorum is {self.policy.quorum}")

        self._wait(round_id, asked, deadline)
        envelopes, digests, refused = self._verified(round_id, asked, tasks)
        answered = sorted(digests)
        if len(envelopes) < self.policy.quorum:
            return self._skip(round_id, kind, asked, answered, f"{len(envelopes)} of {len(asked)} agents answered "
                              f"usably by the deadline, quorum is {self.policy.quorum}", digests, refused)
        try:
            if kind == "score":
                return self._fuse(round_id, prompts, task_items, asked, answered, envelopes, digests, refused)
            return self._collect(round_id, kind, asked, answered, envelopes, digests, refused)
        except (FusionError, KeyHolderError, ArithmeticError) as exc:  # never an exception into TRL
            return self._skip(round_id, kind, asked, answered, f"fusion failed: {type(exc).__name__}: {exc}",
                              digests, refused)

    def _fuse(self, round_id: str, prompts: Sequence[Prompt], items: Sequence[TaskItem], asked: Sequence[str],
              answered: Sequence[str], envelopes: dict[str, Envelope], digests: dict[str, str],
              refused: dict[str, str]) -> RoundResult:
        per_prompt = self.prompt_features(prompts)
        features = per_prompt[torch.tensor([i.prompt_index for i in items])]
        calibrations = {}
        for agent in envelopes:
            row = self.state.agent(agent)
            cal = agent_calibration(row) if row else None
            if cal is not None:
                calibrations[agent] = cal
        outcome = self.privacy.fuse(self.router, FusionInput(round_id, features, envelopes, calibrations))
        refused = {**refused, **outcome.refused}
        if len(outcome.agents_used) < self.policy.quorum:
            return self._skip(round_id, "score", asked, answered, f"{len(outcome.agents_used)} agents usable after "
                              f"checks, quorum is {self.policy.quorum}", digests, refused)
        valid = [r for r in outcome.rewards if r is not None]
        if not all(math.isfinite(r) for r in valid):
            return self._skip(round_id, "score", asked, answered, f"{sum(not math.isfinite(r) for r in valid)} "
                              "fused rewards are not finite", digests, refused)
        summary = {
            "agents_asked": list(asked), "agents_answered": list(answered), "agents_used": list(outcome.agents_used),
            "envelope_sha256": {a: digests[a] for a in outcome.agents_used}, "weights": outcome.weights,
            "refused": refused, "clipped": outcome.clipped, "uncalibrated": list(outcome.uncalibrated),
            "decryptions": outcome.decryptions, "router_digest": self.router.digest(),
            "reward_mean": _mean(valid), "reward_std": _std(valid),
            "rewards_refused": len(outcome.rewards) - len(valid),
        }
        self.state.close_round(round_id, status="fused", outcome=summary)
        self._record("round.fused", {"round_id": round_id, "mode": self.privacy.name, **summary})
        return RoundResult(round_id, "score", "fused", tuple(asked), tuple(answered), outcome.agents_used,
                           rewards=outcome.rewards, weights=outcome.weights, envelope_sha256=digests, refused=refused)

    def _key_bindings(self, envelopes: dict[str, Envelope]) -> dict[str, dict[str, Any] | None]:
        """fused-only public rounds: each agent's enrolment key binding, for the key holder to check itself."""
        if not self.privacy.needs_key_bindings:
            return {}
        out: dict[str, dict[str, Any] | None] = {}
        for agent in envelopes:
            row = self.state.agent(agent)
            try:
                binding = json.loads(row["privacy_report"]).get("key_binding") if row else None
            except (ValueError, TypeError, AttributeError):
                binding = None
            out[agent] = binding if isinstance(binding, dict) else None
        return out

    def _collect(self, round_id: str, kind: TaskKind, asked: Sequence[str], answered: Sequence[str],
                 envelopes: dict[str, Envelope], digests: dict[str, str], refused: dict[str, str]) -> RoundResult:
        raw, not_decrypted = self.privacy.collect(round_id, envelopes, self._key_bindings(envelopes))
        kept, out_of_range, clipped = check_range(raw, self.privacy.scores)
        refused = {**refused, **not_decrypted, **out_of_range}
        vectors = {a: [float(v) for v in t.tolist()] for a, t in kept.items()}
        if len(vectors) < self.policy.quorum:
            return self._skip(round_id, kind, asked, answered, f"{len(vectors)} agents usable after checks, quorum "
                              f"is {self.policy.quorum}", digests, refused)
        used = tuple(sorted(vectors))
        summary = {"agents_asked": list(asked), "agents_answered": list(answered), "agents_used": list(used),
                   "envelope_sha256": {a: digests[a] for a in used}, "refused": refused, "clipped": clipped}
        self.state.close_round(round_id, status="collected", outcome=summary)
        self._record("round.collected", {"round_id": round_id, "kind": kind, "mode": self.privacy.name, **summary})
        return RoundResult(round_id, kind, "collected", tuple(asked), tuple(answered), used, vectors=vectors,
                           envelope_sha256=digests, refused=refused)


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _std(values: Sequence[float]) -> float | None:
    if not values:
        return None
    mu = sum(values) / len(values)
    return math.sqrt(sum((v - mu) ** 2 for v in values) / len(values))
