"""Group commit under many concurrent request threads: every submission decided once, none before its commit.

Why: each waiter now sleeps on its own event and a commit wakes only its group and the next
leader (:meth:`server.ingest.GroupCommit._wait_for`), instead of waking every waiting thread.
A lost hand-over would hang requests; a wrong one would answer before the commit. Here the
commit itself is a recorder (the storage path is tested in ``test_ingest_group_commit.py``), so
hundreds of threads and small groups exercise the hand-over many times in seconds.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from server.ingest import GroupCommit

pytestmark = pytest.mark.timeout(60)


class _Item:
    """Stands in for a :class:`server.ingest.Submission`: the fields the queue touches."""

    def __init__(self, k: int) -> None:
        self.k, self.nonce = k, ("s", str(k), 0.0)
        self.error: BaseException | None = None
        self.done, self.woken, self.committed_in = False, threading.Event(), -1


class _Recording(GroupCommit):
    def __init__(self, max_group: int, fail_group: int | None = None) -> None:
        super().__init__(state=None, audit=None, signing_key=None, max_group=max_group)  # type: ignore[arg-type]
        self.groups_seen: list[list[int]] = []
        self.fail_group = fail_group
        self.active = 0

    def _commit(self, group: list[Any], burnt: list[tuple[str, str, float]]) -> None:
        self.active += 1
        assert self.active == 1, "two leaders committed at once"
        time.sleep(0.002)  # a commit takes time; others queue meanwhile
        self.groups_seen.append([i.k for i in group])
        for item in group:
            item.committed_in = len(self.groups_seen) - 1
        self.active -= 1
        if self.fail_group == len(self.groups_seen) - 1:
            raise OSError("disk full")


@pytest.mark.parametrize("max_group", [1, 5, 256])
def test_every_submission_is_decided_once_by_one_leader_at_a_time(max_group: int, monkeypatch: Any) -> None:
    monkeypatch.setattr("server.ingest.Submission", _Item)  # _lead splits the group by type
    commits = _Recording(max_group)
    items = [_Item(k) for k in range(300)]

    def submit(item: _Item) -> int:
        commits._wait_for(item)  # type: ignore[arg-type]
        assert item.done and item.committed_in >= 0  # never back before the commit that holds it
        return item.committed_in

    with ThreadPoolExecutor(64) as pool:
        groups = list(pool.map(submit, items))
    flat = sorted(k for group in commits.groups_seen for k in group)
    assert flat == list(range(300))  # each exactly once
    assert max(len(g) for g in commits.groups_seen) <= max_group
    assert commits.groups == len(commits.groups_seen) and len(set(groups)) == len(commits.groups_seen)
    assert not commits._leading and not commits._queue  # nobody left holding the lead
    if max_group > 1:
        assert len(commits.groups_seen) < 300  # requests did share commits


def test_a_failed_commit_reaches_exactly_its_group_and_the_next_group_still_commits(monkeypatch: Any) -> None:
    monkeypatch.setattr("server.ingest.Submission", _Item)
    commits = _Recording(max_group=4, fail_group=1)
    items = [_Item(k) for k in range(40)]

    def submit(item: _Item) -> str:
        try:
            commits._wait_for(item)  # type: ignore[arg-type]
        except OSError:
            return "failed"
        return "ok"

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(submit, items))
    failed = {k for k, r in zip(range(40), results, strict=True) if r == "failed"}
    assert failed == set(commits.groups_seen[1])
    assert results.count("ok") == 40 - len(failed) and not commits._leading
