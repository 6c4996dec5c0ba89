"""Where one federated scoring round spends its time: score, seal, transfer, open/fuse, route.

A round runs across several processes (server with the bench's coordinator, three agents, a
key holder under fused-only), so no single
timer sees it. Each stage is read from a clock that brackets it, all ``time.time()`` on the
one machine:

* the agents stamp ``received`` (task in hand), ``scored``, ``sealed`` and ``receipted``
  (:mod:`sim.bench.model_agent`);
* :func:`timed_privacy` stamps when the coordinator hands the verified envelopes to the
  server's privacy-mode object to fuse (``fuse_start``);
* :class:`TimedRouter` and :func:`timed_features` add up the router's own work (prompt
  embedding, weights, weighted sum) wherever the coordinator calls it.

The agents work in parallel, so the round's critical path runs through the *last* agent to
seal its scores (``L``). Not the last to get its receipt: the group commit wakes the
coordinator as soon as the last envelope is stored, so fusion may start while that receipt is
still on its way back to the agent. Then, with ``t0``/``t1`` the bench's stamps around
``run_round``:

* ``score = scored_L - received_L``; ``seal = sealed_L - scored_L``;
* ``route`` = router + prompt-feature seconds;
* ``open/fuse = (t1 - fuse_start) - router seconds inside fusion``: decryption (ckks), the
  key holder's round trip (fused-only), range checks, calibration, the ``round.fused`` audit
  entry and closing the round;
* ``transfer`` = the rest of ``t1 - t0``: issuing the round, the long-poll delivery, TLS +
  HTTP to the server, its verification and group commit, and the coordinator's wake-up.

The five add up to ``t1 - t0`` by construction; :func:`breakdown` checks the stamps are in
order so that a stage can never be negative by accident.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import torch

from corpus.types import Prompt
from server.fusion import FusionInput, FusionOutcome
from server.privacy_mode import PrivacyModeBehaviour
from server.router.base import RouterBase

STAGES = ("score", "seal", "transfer", "open/fuse", "route")


@dataclass
class StageClock:
    """Seconds the router and the feature function spent, and when fusion started."""

    router_s: float = 0.0
    features_s: float = 0.0
    fuse_start: float | None = None

    def reset(self) -> None:
        self.router_s, self.features_s, self.fuse_start = 0.0, 0.0, None


class TimedRouter(RouterBase):
    """Delegates to ``inner``; adds the time of each outermost call to ``clock.router_s``."""

    kind: ClassVar[str] = "timed"  # never audited: config() and the digest are the inner router's

    def __init__(self, inner: RouterBase, clock: StageClock) -> None:
        self.inner, self.clock, self.agents, self._depth = inner, clock, inner.agents, 0

    def _timed(self, call: Callable[[], torch.Tensor]) -> torch.Tensor:
        self._depth += 1
        start = time.perf_counter()
        try:
            return call()
        finally:
            self._depth -= 1
            if self._depth == 0:
                self.clock.router_s += time.perf_counter() - start

    def masked_weights(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.inner.masked_weights(features, mask)

    def config(self) -> dict[str, Any]:
        return self.inner.config()

    def state_fingerprint(self) -> dict[str, Any]:
        return self.inner.state_fingerprint()

    def weights(self, features: torch.Tensor, available: Sequence[str]) -> torch.Tensor:
        return self._timed(lambda: RouterBase.weights(self, features, available))

    def fuse(self, features: torch.Tensor, scores: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self._timed(lambda: RouterBase.fuse(self, features, scores))

    def weights_for_fused_only(self, features: torch.Tensor, available: Sequence[str]) -> torch.Tensor:
        return self._timed(lambda: RouterBase.weights_for_fused_only(self, features, available))


def timed_features(fn: Callable[[Sequence[Prompt]], torch.Tensor], clock: StageClock
                   ) -> Callable[[Sequence[Prompt]], torch.Tensor]:
    """``fn`` with its seconds added to ``clock.features_s`` (the router's input: part of *route*)."""

    def features(prompts: Sequence[Prompt]) -> torch.Tensor:
        start = time.perf_counter()
        try:
            return fn(prompts)
        finally:
            clock.features_s += time.perf_counter() - start

    return features


class _TimedPrivacy:
    """Delegates everything to the server's privacy-mode object; stamps the wall clock when ``fuse`` starts."""

    def __init__(self, inner: PrivacyModeBehaviour, clock: StageClock) -> None:
        self._inner, self._clock = inner, clock

    def fuse(self, router: RouterBase, inp: FusionInput) -> FusionOutcome:
        self._clock.fuse_start = time.time()
        return self._inner.fuse(router, inp)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def timed_privacy(inner: PrivacyModeBehaviour, clock: StageClock) -> PrivacyModeBehaviour:
    """``inner`` (the mode object the server was wired with), stamping ``clock.fuse_start`` at each fusion."""
    return cast(PrivacyModeBehaviour, _TimedPrivacy(inner, clock))


def breakdown(t0: float, t1: float, agents: Mapping[str, Mapping[str, float]], clock: StageClock
              ) -> dict[str, float]:
    """Seconds per stage of one round (see the module docstring); ValueError if the stamps are out of order.

    >>> c = StageClock(router_s=0.1, features_s=0.2, fuse_start=10.0)
    >>> a = {"x": {"received": 1.0, "scored": 5.0, "sealed": 5.5, "receipted": 10.5}}
    >>> {k: round(v, 3) for k, v in breakdown(0.0, 11.0, a, c).items()}
    {'score': 4.0, 'seal': 0.5, 'transfer': 5.3, 'open/fuse': 0.9, 'route': 0.3, 'round': 11.0}
    """
    if not agents or clock.fuse_start is None:
        raise ValueError("no agent stamps or fusion never started: the round was not fused")
    last = max(agents.values(), key=lambda s: s["sealed"])
    order = [t0, last["received"], last["scored"], last["sealed"], clock.fuse_start, t1]
    if any(b < a for a, b in zip(order, order[1:], strict=False)):
        raise ValueError(f"stage stamps out of order: {order}")
    if any(s["receipted"] < s["sealed"] for s in agents.values()):
        raise ValueError(f"stage stamps out of order: a receipt before its seal: {dict(agents)}")
    stages = {"score": last["scored"] - last["received"], "seal": last["sealed"] - last["scored"],
              "open/fuse": (t1 - clock.fuse_start) - clock.router_s,
              "route": clock.router_s + clock.features_s}
    stages["transfer"] = (t1 - t0) - sum(stages.values())
    return {name: stages[name] for name in STAGES} | {"round": t1 - t0}
