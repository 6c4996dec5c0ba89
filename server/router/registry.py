"""Build a router by name, as policy files and the CLI name them."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from server.errors import RouterConfigError
from server.router.base import RouterBase
from server.router.fixed import FixedRouter, UniformRouter
from server.router.learned import LearnedRouter

ROUTERS: dict[str, type[RouterBase]] = {"uniform": UniformRouter, "fixed": FixedRouter, "learned": LearnedRouter}


def make_router(kind: str, agents: Sequence[str], **kwargs: Any) -> RouterBase:
    """``make_router("fixed", ["a", "b"], weights={"a": 2, "b": 1})``; unknown kinds/keywords are refused.

    >>> import torch
    >>> make_router("uniform", ["hospital", "bank"]).weights(torch.zeros(1, 4), ["bank"]).tolist()
    [[1.0]]
    """
    if kind not in ROUTERS:
        raise RouterConfigError(f"unknown router kind {kind!r}; expected one of {sorted(ROUTERS)}")
    cls = ROUTERS[kind]
    if kind == "fixed":
        kwargs = {**kwargs, "agents": agents}
        args: tuple[Any, ...] = ()
    else:
        args = (agents,)
    try:
        inspect.signature(cls).bind(*args, **kwargs)
    except TypeError as exc:
        raise RouterConfigError(f"make_router({kind!r}): {exc}") from None
    return cls(*args, **kwargs)
