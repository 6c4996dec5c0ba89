"""What the server aligns on: the ``[data]`` table of ``training.toml``, or the built-in corpus.

Three server-held sets, each a dataset folder made by ``mor data import`` (docs/data.md):

* ``prompts``: a ``--kind prompts`` dataset — the (image, question) pairs GRPO trains on, sent
  to every member for scoring;
* ``calibration``: a ``--kind pairs`` dataset — both answers of every pair are scored by every
  member, and each member's mean/std over them puts it on the common scale. Pairs (not
  prompts) because calibration needs answers of varied quality, which is what a pair holds;
* ``router_pairs``: a ``--kind pairs`` dataset — the public labelled pairs the router is
  fitted on.

A table left out falls back to the built-in synthetic corpus (sized by ``n_prompts``,
``n_calibration``, ``n_public_pairs``), so the demo keeps working; a named dataset is used
whole (those counts do not apply: nothing a user supplied is silently dropped). Every set —
supplied or built in — is recorded in the audit log (``data.loaded``: role, source, count,
SHA-256, domains) and in the state store for the status page, so an auditor can tell what
the policy was aligned on. All three are public to the consortium: each member sees the
prompts and answers it scores.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from corpus.errors import CorpusError
from corpus.types import PreferencePair, Prompt
from server.config import FrozenConfig
from server.errors import ConfigError
from server.services import AuditTrail
from server.state import StateStore
from wire.messages import TaskItem, TaskKind, TaskPayload


class DataSection(FrozenConfig):
    """``[data]`` of ``training.toml``: dataset folders (relative paths resolve against the file's folder)."""

    prompts: Path | None = Field(default=None, description="a `mor data import --kind prompts` dataset for GRPO")
    calibration: Path | None = Field(default=None, description="a pairs dataset; every answer is a calibration item")
    router_pairs: Path | None = Field(default=None, description="a pairs dataset with public labels for the router")


@dataclass(frozen=True)
class LoadedSet:
    """One server-held set and what the audit log says about it."""

    role: str
    summary: dict[str, Any]


def _builtin_summary(count: int, prompts: Sequence[Prompt], texts: Sequence[str], seed: int) -> dict[str, Any]:
    """A digest of a built-in set (prompt ids, questions, answers), so two runs can be compared."""
    digest = hashlib.sha256(json.dumps([[p.prompt_id, p.question] for p in prompts] + list(texts)).encode())
    return {"source": "built-in corpus", "seed": seed, "count": count, "sha256": digest.hexdigest(),
            "domains": dict(Counter(p.domain for p in prompts))}


def _dataset_summary(summary: dict[str, Any]) -> dict[str, Any]:
    return {"source": summary["path"], "layout": summary["layout"], "count": summary["count"],
            "sha256": summary["sha256"], "domains": summary["domains"]}


def _load(loader: Any, path: Path, role: str) -> Any:
    try:
        return loader(path)
    except CorpusError as exc:
        raise ConfigError(f"[data].{role}: {exc}") from None


def load_prompts(section: DataSection, *, n: int, seed: int) -> tuple[list[Prompt], LoadedSet]:
    """GRPO prompts: the ``prompts`` dataset whole, or ``n`` built-in prompts."""
    if section.prompts is None:
        from corpus import build_prompts

        prompts = build_prompts(n, split="train", seed=seed)
        return prompts, LoadedSet("prompts", _builtin_summary(len(prompts), prompts, (), seed))
    from corpus.dataset import load_prompt_dataset

    dataset = _load(load_prompt_dataset, section.prompts, "prompts")
    if not dataset.prompts:
        raise ConfigError(f"[data].prompts: {section.prompts} holds no prompts")
    return list(dataset.prompts), LoadedSet("prompts", _dataset_summary(dataset.info.summary()))


def load_calibration(section: DataSection, *, n: int, seed: int) -> tuple[list[tuple[Prompt, str]], LoadedSet]:
    """Calibration items (prompt, answer): both answers of every pair, or ``n`` built-in items."""
    if section.calibration is None:
        from corpus import build_calibration_set

        batch = build_calibration_set(n, seed=seed)
        return batch, LoadedSet("calibration", _builtin_summary(len(batch), [p for p, _ in batch],
                                                                [r for _, r in batch], seed))
    from corpus.dataset import load_pair_dataset

    dataset = _load(load_pair_dataset, section.calibration, "calibration")
    items = [(p.prompt, answer) for p in dataset.pairs for answer in (p.chosen, p.rejected)]
    if len(items) < 2:
        raise ConfigError(f"[data].calibration: {section.calibration} needs at least one pair")
    return items, LoadedSet("calibration", _dataset_summary(dataset.info.summary()))


def load_router_pairs(section: DataSection, *, n: int, seed: int) -> tuple[list[PreferencePair], LoadedSet]:
    """Public labelled pairs for the router fit: the ``router_pairs`` dataset whole, or ``n`` built-in pairs."""
    if section.router_pairs is None:
        from corpus import build_public_pairs

        pairs = build_public_pairs(n, seed=seed)
        return pairs, LoadedSet("router_pairs", _builtin_summary(
            len(pairs), [p.prompt for p in pairs], [t for p in pairs for t in (p.chosen, p.rejected)], seed))
    from corpus.dataset import load_pair_dataset

    dataset = _load(load_pair_dataset, section.router_pairs, "router_pairs")
    if len(dataset.pairs) < 4:
        raise ConfigError(f"[data].router_pairs: {section.router_pairs} holds {len(dataset.pairs)} pairs; the router "
                          "fit needs at least 4")
    return list(dataset.pairs), LoadedSet("router_pairs", _dataset_summary(dataset.info.summary()))


Items = list[tuple[int, str]]


def calibration_round(batch: Sequence[tuple[Prompt, str]]) -> tuple[list[Prompt], Items]:
    """The calibrate round's prompts and items, in the one order its published digest is computed in."""
    return [p for p, _ in batch], [(i, answer) for i, (_, answer) in enumerate(batch)]


def router_round(pairs: Sequence[PreferencePair]) -> tuple[list[Prompt], Items]:
    """The router round: each prompt once, then chosen and rejected of every pair (chosen at even items)."""
    prompts = list({p.prompt.prompt_id: p.prompt for p in pairs}.values())
    index = {p.prompt_id: i for i, p in enumerate(prompts)}
    return prompts, [item for p in pairs for item in ((index[p.prompt.prompt_id], p.chosen),
                                                     (index[p.prompt.prompt_id], p.rejected))]


def round_digest(kind: TaskKind, prompts: Sequence[Prompt], items: Items) -> str:
    """What a member will compute for this round's task and sign (``wire.messages.payload_digest``)."""
    from server.rounds import prompt_payload

    return TaskPayload(kind=kind, prompts=[prompt_payload(p) for p in prompts],
                       items=[TaskItem(prompt_index=i, response=r) for i, r in items]).digest()


def public_round_digests(section: DataSection, *, n_calibration: int, n_public_pairs: int, seed: int
                         ) -> dict[str, str]:
    """The digests a fused-only policy publishes in ``privacy.public_round_digests`` for this training setup."""
    batch, _ = load_calibration(section, n=n_calibration, seed=seed)
    pairs, _ = load_router_pairs(section, n=n_public_pairs, seed=seed)
    return {"calibrate": round_digest("calibrate", *calibration_round(batch)),
            "router": round_digest("router", *router_round(pairs))}


def record_loaded(loaded: LoadedSet, *, audit: AuditTrail, state: StateStore, actor: str, now: float) -> None:
    """``data.loaded`` in the audit log, and the same summary in the state store for the status page."""
    audit.record(actor, "data.loaded", {"role": loaded.role, **loaded.summary})
    state.set_dataset(loaded.role, loaded.summary, now=now)


__all__ = ["DataSection", "LoadedSet", "calibration_round", "load_calibration", "load_prompts", "load_router_pairs",
           "public_round_digests", "record_loaded", "round_digest", "router_round"]
