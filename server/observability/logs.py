"""Log lines for people (``text``) or for log shippers (``json``: one object per line).

Why JSON as an option: a site's log pipeline (journald -> Loki, Fluent Bit, Elastic) indexes
fields, and a multi-line traceback or a message with spaces breaks line-based parsing. Each
JSON line has ``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``message`` and, when there is
one, ``exc`` (the formatted traceback in one string). Every handler on the root logger gets
the formatter, and uvicorn is told not to install its own handlers while JSON is on
(:func:`uvicorn_log_config`), so its lines come out as JSON too.

The choice is process-wide because logging is: the CLI flag (``--log-format``) sets it first
and wins; otherwise the config file's ``[observability].log_format`` applies once it is read.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

TEXT_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
_state = {"format": "text", "explicit": False}


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring for the fields)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "message": record.getMessage(),
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def _formatter(fmt: str) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT)


def configure_logging(level: str, fmt: str | None = None) -> None:
    """The CLI's logging set-up: ``level`` and, if the user chose one, ``fmt`` (which then wins over configs)."""
    logging.basicConfig(level=level.upper(), format=TEXT_FORMAT)
    if fmt is not None:
        _state["explicit"] = True
        use_log_format(fmt)


def adopt_config_format(fmt: str) -> None:
    """Apply a config file's ``log_format`` unless the command line already chose one (or it is already in use)."""
    if not _state["explicit"] and fmt != _state["format"]:
        use_log_format(fmt)


def use_log_format(fmt: str) -> None:
    """Put the formatter for ``fmt`` on every root handler (creating one on stderr if there is none)."""
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    for handler in root.handlers:
        handler.setFormatter(_formatter(fmt))
    logging.captureWarnings(fmt == "json")  # e.g. InsecurePolicyWarning: a log line, not a raw stderr line
    _state["format"] = fmt


def json_logging() -> bool:
    """Whether log lines are JSON in this process."""
    return _state["format"] == "json"


def uvicorn_log_config() -> dict[str, Any] | None:
    """uvicorn's ``log_config``: its own handlers in text mode, none in JSON mode (its records go to the root)."""
    if json_logging():
        return None
    from uvicorn.config import LOGGING_CONFIG

    return LOGGING_CONFIG

