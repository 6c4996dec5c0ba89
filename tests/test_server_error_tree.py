"""The server's exceptions form one tree: every one is a ``ServerError`` and drawn in ``server/errors.py``.

Why: callers (the CLI's one-line error, the runner's shutdown path) catch ``ServerError`` to
mean "anything the server refuses"; an exception class defined on the side, under plain
``Exception``, escapes that as a traceback. The two deliberate exceptions are documented roots.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re

import server
import server.errors as server_errors
from server.errors import ServerError, ShutdownRequested
from server.rejections import Rejection

DOCUMENTED_ROOTS = {Rejection, ShutdownRequested}  # HTTP answers; a stop request (BaseException)


def _exception_classes_defined_under_server() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(server.__path__, prefix="server."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == info.name:
                found[f"{info.name}.{name}"] = obj
    return found


def test_every_server_exception_derives_from_server_error_and_is_drawn_in_the_tree() -> None:
    classes = _exception_classes_defined_under_server()
    assert len(classes) >= 17, sorted(classes)  # the walk really found the tree (and the two roots)
    outside = sorted(path for path, cls in classes.items()
                     if cls not in DOCUMENTED_ROOTS and not issubclass(cls, ServerError))
    assert outside == [], f"not under ServerError: {outside}"
    tree = server_errors.__doc__ or ""
    undrawn = sorted(path for path, cls in classes.items() if not re.search(rf"\b{cls.__name__}\b", tree))
    assert undrawn == [], f"missing from the tree in server/errors.py: {undrawn}"


def test_fusion_errors_live_in_the_one_errors_module() -> None:
    from server import fusion, rounds

    for name in ("FusionError", "PrivacyModeError"):
        cls = getattr(server_errors, name)
        assert cls.__module__ == "server.errors" and issubclass(cls, ServerError)
        assert getattr(fusion, name) is cls  # the old import path still names the same class
    assert rounds.PrivacyModeError is server_errors.PrivacyModeError
    assert issubclass(server_errors.PrivacyModeError, server_errors.FusionError)
    assert not issubclass(ShutdownRequested, Exception)  # no `except Exception` in TRL swallows a stop
