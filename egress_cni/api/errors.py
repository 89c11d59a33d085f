"""Errors that name where in an object the problem is."""

from __future__ import annotations


class FieldError(ValueError):
    """A value at `path` (e.g. `spec.ippools.ipv4[2]`) is invalid.

    `message` says what is wrong and, where it helps, what would be accepted.
    """

    def __init__(self, path: str, value: object, message: str) -> None:
        self.path = path
        self.value = value
        self.message = message
        super().__init__(f"{path}: {message} (got {value!r})" if value is not None else f"{path}: {message}")


def join(path: str, key: str | int) -> str:
    """Extend a field path: join("spec", "ippools") -> "spec.ippools"; join("x", 2) -> "x[2]"."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key
