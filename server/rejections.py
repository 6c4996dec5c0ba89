"""HTTP-facing refusals, kept apart from programmer errors (the FastAPI ``HTTPException`` idea).

A :class:`Rejection` is the one way request handling says "no": it carries the status, a
stable machine ``code`` and a precise human message. The app turns every Rejection into a
``wire.messages.ErrorBody`` reply **and** an audit entry ``reject.<code>``; anything else that
escapes a handler is a bug, answered as an opaque 500 ``internal_error`` and logged.

Messages often quote the request (an id, a field path). They are bounded here, once, for
every refusal: at most :data:`MAX_MESSAGE_CHARS` characters and always encodable as UTF-8.
Why: an unbounded echo made a refusal's audit entry exceed the log's 64 KiB entry limit, so
the refusal went unaudited; a lone surrogate in the echo made the JSON reply itself fail.
"""

from __future__ import annotations

MAX_MESSAGE_CHARS = 2000


def bounded_text(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` made UTF-8-safe (lone surrogates as ``\\udXXX`` escapes) and cut to ``limit`` characters."""
    safe = text if text.isascii() else text.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(safe) <= limit:
        return safe
    keep = max(0, limit - 40)  # room for the marker, which says how much is gone
    return f"{safe[:keep]}… [{len(safe) - keep} characters cut]"


class Rejection(Exception):  # noqa: N818 - an HTTP answer, not an error (cf. HTTPException)
    """Refuse the current request with ``status`` / ``code`` / ``message`` (see the module docstring)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        if not 400 <= status <= 599:
            raise ValueError(f"status={status}: a rejection is a 4xx/5xx")
        message = bounded_text(message)
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"Rejection({self.status}, {self.code!r}, {self.message!r})"
