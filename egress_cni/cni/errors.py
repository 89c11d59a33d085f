"""CNI error results (spec 1.x section "Error"): the code tells the runtime what went wrong."""

from __future__ import annotations

INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENV = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
INVALID_NETNS = 8  # Go library extra: the target netns is the plugin's own
TRY_AGAIN_LATER = 11
NOT_AVAILABLE = 50  # STATUS
# 100+ are ours.
SETUP_FAILED = 100
CHECK_FAILED = 101
REGISTRY_FAILED = 102
INTERNAL = 199


class CNIError(Exception):
    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_dict(self, cni_version: str) -> dict[str, object]:
        out: dict[str, object] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out
