"""JSON through the C accelerator `_json` without importing `json`.

`import json` pulls in `re` and `enum` (~8 ms on a loaded node), which alone would eat a third of the
plugin's latency budget (it must stay within 2x of Debian's Go `bridge`). The C scanner/encoder
are the same code `json` uses; only the pure-Python glue is skipped.
"""

from __future__ import annotations

import _json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class DecodeError(ValueError):
    """Input is not one complete JSON document."""


class _ScanContext:
    # The attribute set `_json.make_scanner` reads from a JSONDecoder.
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    memo: dict[str, str] = {}

    @staticmethod
    def parse_constant(name: str) -> float:
        return {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}[name]


_scan_once = _json.make_scanner(_ScanContext())  # type: ignore[arg-type]
_WHITESPACE = " \t\n\r"


def loads(text: str | bytes) -> Any:
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    start = len(text) - len(text.lstrip(_WHITESPACE))
    try:
        value, end = _scan_once(text, start)
    except Exception:
        # The C scanner's own error reporting needs `json.decoder`; pay for it only on bad input.
        raise DecodeError(_explain(text)) from None
    finally:
        _ScanContext.memo.clear()
    if text[end:].strip(_WHITESPACE):
        raise DecodeError(f"extra data after the JSON value at offset {end}")
    return value


def _explain(text: str) -> str:
    import json

    try:
        json.loads(text)
    except ValueError as exc:
        return str(exc)
    return "not a JSON document"


def _unencodable(obj: object) -> object:
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serializable")


def _encoder(sort_keys: bool, separators: tuple[str, str]) -> Any:
    # c_make_encoder(markers, default, encoder, indent, key_separator, item_separator, sort_keys, skipkeys, allow_nan)
    return _json.make_encoder(
        {}, _unencodable, _json.encode_basestring_ascii, None, separators[1], separators[0], sort_keys, False, False
    )


_COMPACT = _encoder(True, (",", ":"))
_SPACED = _encoder(False, (", ", ": "))


def dumps(value: Any, *, compact: bool = True) -> str:
    """Serialise dicts/lists/str/int/float/bool/None; compact output has sorted keys."""
    encoder = _COMPACT if compact else _SPACED
    return "".join(encoder(value, 0))
