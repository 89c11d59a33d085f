"""Plugin logs: one line per event, constant message + key=value fields, to stderr or `logFile`.

stdout is the CNI protocol and never carries logs.
"""

from __future__ import annotations

import os
import sys
import time


class Logger:
    def __init__(self, file: str = "", **context: str) -> None:
        self.file = file
        self.context = context

    def bind(self, **context: str) -> Logger:
        return Logger(self.file, **{**self.context, **context})

    def log(self, level: str, msg: str, **fields: object) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z"
        parts = [stamp, level, msg] + [f"{k}={v}" for k, v in {**self.context, **fields}.items()]
        line = " ".join(parts) + "\n"
        if self.file:
            try:
                fd = os.open(self.file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
                try:
                    os.write(fd, line.encode())
                finally:
                    os.close(fd)
                return
            except OSError:
                pass  # fall back to stderr: a broken log path must not fail pod setup
        sys.stderr.write(line)

    def info(self, msg: str, **fields: object) -> None:
        self.log("info", msg, **fields)

    def warning(self, msg: str, **fields: object) -> None:
        self.log("warning", msg, **fields)

    def error(self, msg: str, **fields: object) -> None:
        self.log("error", msg, **fields)
