"""HTTP-facing refusals, kept apart from programmer errors (the FastAPI ``HTTPException`` idea).

A :class:`Rejection` is the one way request handling says "no": it carries the status, a
stable machine ``code`` and a precise human message. The app turns every Rejection into a
``wire.messages.ErrorBody`` reply **and** an audit entry ``reject.<code>``; anything else that
escapes a handler is a bug, answered as an opaque 500 ``internal_error`` and logged.
"""

from __future__ import annotations


class Rejection(Exception):  # noqa: N818 - an HTTP answer, not an error (cf. HTTPException)
    """Refuse the current request with ``status`` / ``code`` / ``message`` (see the module docstring)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        if not 400 <= status <= 599:
            raise ValueError(f"status={status}: a rejection is a 4xx/5xx")
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"Rejection({self.status}, {self.code!r}, {self.message!r})"
