"""One logging setup for every daemon (controller, agent, webhook and its gunicorn workers).

Messages are constant; what varies goes into `extra=` fields, and both formats print them:

    text (default)  2026-05-09 07:35:25,123 INFO egress_cni.controller slow reconcile pass seconds=0.61 policies=3
    json            {"time": "2026-05-09T07:35:25.123+00:00", "level": "INFO", "logger": "...", "message": "...", "seconds": 0.61}

A text value is printed bare when it is a number, a boolean or a word without spaces, quotes or
`=`; otherwise JSON-quoted, so a line splits back into its pairs. Lists, tuples, sets and mappings
print as JSON in both formats. Tracebacks follow the line (text) or go into `exception` (json).
Every daemon takes `--log-level` (env LOG_LEVEL, default INFO) and `--log-format` (env
LOG_FORMAT, default text); the flag wins over the variable.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import IO, Any

TEXT, JSON = "text", "json"
FORMATS = (TEXT, JSON)
LEVEL_ENV, FORMAT_ENV = "LOG_LEVEL", "LOG_FORMAT"

# Attributes every LogRecord has; anything else on a record came in through `extra=`.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
_JSON_BASE = ("time", "level", "logger", "message")
_BARE = re.compile(r'[^\s"=\\]+')


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """The `extra=` fields of a record, in the order they were given."""
    return {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRIBUTES and not k.startswith("_")}


def _plain(value: Any) -> Any:
    """A JSON-encodable form of a field value (sets sorted, unknown objects as their str)."""
    if isinstance(value, set | frozenset):
        return sorted((_plain(v) for v in value), key=str)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def text_value(value: Any) -> str:
    if isinstance(value, str):
        return value if _BARE.fullmatch(value) else json.dumps(value, ensure_ascii=False)
    plain = _plain(value)
    if isinstance(plain, str):  # an object printed as its str
        return text_value(plain)
    return json.dumps(plain, ensure_ascii=False, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """`time LEVEL logger message key=value ...`, then the traceback if there is one."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        record.asctime = self.formatTime(record, self.datefmt)
        line = self.formatMessage(record)
        pairs = " ".join(f"{k}={text_value(v)}" for k, v in fields(record).items())
        if pairs:
            line = f"{line} {pairs}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line = f"{line}\n{record.exc_text}"
        if record.stack_info:
            line = f"{line}\n{self.formatStack(record.stack_info)}"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line. An extra field named like a base key is kept as `field.<name>`."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "message": record.getMessage(),
        }
        for key, value in fields(record).items():
            out[f"field.{key}" if key in _JSON_BASE else key] = _plain(value)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, separators=(",", ":"))


def formatter(fmt: str) -> logging.Formatter:
    if fmt == TEXT:
        return TextFormatter()
    if fmt == JSON:
        return JsonFormatter()
    raise ValueError(f"log format {fmt!r}: expected one of {', '.join(FORMATS)}")


def level_number(level: str | int) -> int:
    if isinstance(level, int):
        return level
    names = logging.getLevelNamesMapping()
    try:
        return names[level.strip().upper()]
    except KeyError:
        raise ValueError(f"log level {level!r}: expected one of {', '.join(n for n in names if n != 'NOTSET')}") from None


def setup(level: str | int = "INFO", fmt: str = TEXT, stream: IO[str] | None = None) -> logging.Handler:
    """Make the root logger write `fmt` lines to `stream` (stderr); replaces its handlers, so calling
    it twice leaves one handler."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter(fmt))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level_number(level))
    return handler


def adopt(logger: logging.Logger, fmt: str) -> None:
    """Give the handlers a library installed on `logger` (gunicorn's) our format."""
    for handler in logger.handlers:
        handler.setFormatter(formatter(fmt))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--log-level and --log-format; unset they stay None and `resolve` reads the environment."""
    parser.add_argument("--log-level", default=None, help=f"DEBUG, INFO, WARNING, ERROR (env {LEVEL_ENV}, default INFO)")
    parser.add_argument("--log-format", default=None, choices=FORMATS, help=f"text or json lines (env {FORMAT_ENV}, default text)")


def resolve(level: str | None, fmt: str | None, env: Mapping[str, str] | None = None) -> tuple[str, str]:
    """(level, format): flag > environment > default; raises ValueError naming the bad one."""
    env = os.environ if env is None else env
    chosen_level = level if level is not None else env.get(LEVEL_ENV) or "INFO"
    chosen_format = fmt if fmt is not None else env.get(FORMAT_ENV) or TEXT
    source = "--log-level" if level is not None else LEVEL_ENV
    try:
        level_number(chosen_level)
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None
    if chosen_format not in FORMATS:
        source = "--log-format" if fmt is not None else FORMAT_ENV
        raise ValueError(f"{source}: log format {chosen_format!r}: expected one of {', '.join(FORMATS)}")
    return chosen_level.strip().upper(), chosen_format
