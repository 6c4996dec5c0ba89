"""The GRPO reward callable: one TRL reward call = one federated scoring round.

TRL calls the reward function once per generation batch with every completion of that batch
(G per prompt, in TRL's order) and the dataset's columns repeated per completion
(``prompt_id``, ``image``...). We turn that into one round of kind ``score``: the distinct
prompts (in order of first appearance) and one item per completion pointing at its prompt;
the coordinator sends it to every live agent and fuses the answers. The fused rewards come
back in the items' order, which *is* TRL's order.

Where the coordinator runs is the transport's business (:mod:`server.round_transport`): in
this process (``mor server run``) or in the service, over mutual TLS (``mor server train``,
one reward call per rank per step, keyed ``(run, step, rank)``). This class is the same for both.
With scoring overlapped (:mod:`server.grpo_overlap`) calls for different steps' slices run at
the same time on worker threads, so the bookkeeping below is under a lock.

A round below quorum returns ``None`` for every completion: TRL then gives those completions
zero advantage (the step only pays the KL term) — the step is skipped, never fused.

Per call we log, both through TRL's ``log_metric`` (so they sit next to ``kl`` and ``reward``
in each step's metrics) and as one JSON line in the step log: reward mean/std, agents asked /
answered / used, router weights, and the round's id and status. Example::

    >>> reward = FederatedReward(coordinator, prompts, step_log=Path("out/rounds.jsonl"))  # doctest: +SKIP
    >>> run_grpo(model_path=policy, prompts=prompts, reward_fn=reward, config=cfg)          # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from corpus.types import Prompt
from server.errors import RewardError
from server.round_transport import InProcessRounds, RoundKey, RoundTransport
from server.rounds import RoundCoordinator, RoundResult
from wire.messages import TaskItem

MetricFn = Callable[[str, float], None]


def completion_text(completion: Any) -> str:
    """The answer text of one TRL completion (plain string or conversational message list).

    >>> completion_text([{"role": "assistant", "content": "a red circle"}])
    'a red circle'
    >>> completion_text([{"role": "assistant", "content": [{"type": "text", "text": "yes"}]}])
    'yes'
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        content = completion[-1].get("content", "")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    raise RewardError(f"cannot read a completion of type {type(completion).__name__}: {completion!r:.80}")


def short_name(identity: str) -> str:
    """``mor://consortium/client/alice`` -> ``alice`` (metric names stay readable)."""
    return identity.rstrip("/").rsplit("/", 1)[-1]


class FederatedReward:
    """``reward(prompts, completions, prompt_id=[...], **columns) -> list[float | None]``, one round per call."""

    def __init__(self, rounds: RoundCoordinator | RoundTransport, prompts: Sequence[Prompt], *,
                 step_log: Path | None = None, max_response_chars: int = 4000, run_id: str = "run",
                 rank: int = 0) -> None:
        self.transport = InProcessRounds(rounds, prompts) if isinstance(rounds, RoundCoordinator) else rounds
        self.run_id, self.rank = run_id, rank
        self.prompts = {p.prompt_id: p for p in prompts}
        self.step_log = step_log
        self.max_response_chars = max_response_chars
        self.calls = 0
        self.results: list[RoundResult] = []
        self._lock = threading.Lock()

    def __call__(self, prompts: list[Any], completions: list[Any], completion_ids: Any = None, *,
                 prompt_id: Sequence[str], log_metric: MetricFn | None = None, trainer_state: Any = None,
                 **_columns: Any) -> list[float | None]:
        if len(prompt_id) != len(completions):
            raise RewardError(f"{len(prompt_id)} prompt ids for {len(completions)} completions")
        unknown = sorted({pid for pid in prompt_id if pid not in self.prompts})
        if unknown:
            raise RewardError(f"prompt ids {unknown[:3]} are not in this run's prompt set")
        order: list[str] = list(dict.fromkeys(prompt_id))
        index = {pid: i for i, pid in enumerate(order)}
        items = [TaskItem(prompt_index=index[pid], response=completion_text(c)[: self.max_response_chars])
                 for pid, c in zip(prompt_id, completions, strict=True)]
        key = RoundKey(self.run_id, int(getattr(trainer_state, "global_step", self.calls)), self.rank)
        result = self.transport.score(key, order, items)
        rewards: list[float | None] = list(result.rewards) if result.rewards is not None else [None] * len(completions)
        with self._lock:
            self.calls += 1
            self.results.append(result)
            self._log(result, rewards, trainer_state, log_metric)
        return rewards

    def _log(self, result: RoundResult, rewards: Sequence[float | None], trainer_state: Any,
             log_metric: MetricFn | None) -> None:
        scored = [r for r in rewards if r is not None]
        mean = sum(scored) / len(scored) if scored else None
        std = math.sqrt(sum((r - mean) ** 2 for r in scored) / len(scored)) if mean is not None else None
        record = {
            "call": self.calls, "step": getattr(trainer_state, "global_step", None), "rank": self.rank,
            "round_id": result.round_id,
            "status": result.status, "reason": result.reason, "n_completions": len(rewards), "n_scored": len(scored),
            "reward_mean": mean, "reward_std": std, "agents_asked": list(result.agents_asked),
            "agents_answered": list(result.agents_answered), "agents_used": list(result.agents_used),
            "router_weights": result.weights, "refused": result.refused,
        }
        if self.step_log is not None:
            self.step_log.parent.mkdir(parents=True, exist_ok=True)
            with self.step_log.open("a", encoding="utf-8") as sink:
                sink.write(json.dumps(record, sort_keys=True) + "\n")
        if log_metric is not None:
            log_metric("agents_asked", float(len(result.agents_asked)))
            log_metric("agents_answered", float(len(result.agents_answered)))
            log_metric("agents_used", float(len(result.agents_used)))
            log_metric("round_skipped", 1.0 if result.skipped else 0.0)
            for agent, weight in result.weights.items():
                log_metric(f"router_weight/{short_name(agent)}", weight)
