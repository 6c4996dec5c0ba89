"""Members who enrol after the router was built: who joins it, and who is not asked to score.

The trainer builds its first router over the members live once quorum is reached; members
start at different times (a site's agent retries with backoff until the server is up, so a
few seconds apart is normal), so another may enrol a moment later. Before this module, such a
member was asked to score every round and its envelope was then refused at fusion ("not an
agent of the current router") for the whole run: work done, receipts given, never used —
found by ``tests/test_multi_host_netns.py``.

* A **uniform** router (capped or not) weighs every member equally, so a newcomer simply joins:
  the router is rebuilt over the old members plus the new, and the change is audited
  (``router.updated`` with ``added``).
* A **fixed** or **learned** router has no weight for a member it was not built (or fitted)
  for, so that member is not asked to score at all; the round's ``round.opened`` entry names it
  (``not_weighed``), and the operator refits or restarts to bring it in.

    router, added, left_out = admit_members(router, live)
"""

from __future__ import annotations

from collections.abc import Sequence

from server.router.base import RouterBase
from server.router.capped import CappedRouter
from server.router.fixed import UniformRouter


def admit_members(router: RouterBase, live: Sequence[str]) -> tuple[RouterBase, list[str], list[str]]:
    """``(router to use, members added to it, live members it cannot weigh)`` for the live members.

    >>> r, added, left_out = admit_members(UniformRouter(["a", "b"]), ["a", "b", "c"])
    >>> r.agents, added, left_out
    (('a', 'b', 'c'), ['c'], [])
    """
    new = [a for a in live if a not in router.agents]
    if not new:
        return router, [], []
    inner = router.inner if isinstance(router, CappedRouter) else router
    if not isinstance(inner, UniformRouter):
        return router, [], new
    grown: RouterBase = UniformRouter([*inner.agents, *new])
    if isinstance(router, CappedRouter):
        grown = CappedRouter(grown, router.max_weight)
    return grown, new, []


__all__ = ["admit_members"]
