"""Installation settings the rules depend on, read from the environment with safe defaults."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

# Gateway annotation that lets policies of different namespaces name the same EIP.
ANNOTATION_ALLOW_EIP_SHARING = "egressgateway.spidernet.io/allow-eip-sharing"

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def parse_bool(name: str, text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name}={text!r}: expected true or false")


@dataclass(frozen=True)
class WebhookConfig:
    """Which IP families the installation serves, and where the webhook itself lives.

    Both families are on by default: a dual-stack installation accepts single-family gateways too,
    so the permissive default never rejects a valid IPv4-only configuration. An installation that
    runs IPv4 only sets EGRESS_ENABLE_IPV6=false and IPv6 configuration is then refused up front
    instead of silently doing nothing.
    """

    enable_ipv4: bool = True
    enable_ipv6: bool = True
    namespace: str = "egressgateway-system"

    def __post_init__(self) -> None:
        if not (self.enable_ipv4 or self.enable_ipv6):
            raise ValueError("at least one of EGRESS_ENABLE_IPV4 and EGRESS_ENABLE_IPV6 must be true")

    def family_enabled(self, version: int) -> bool:
        return self.enable_ipv4 if version == 4 else self.enable_ipv6

    @property
    def dual_stack(self) -> bool:
        return self.enable_ipv4 and self.enable_ipv6

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WebhookConfig:
        env = os.environ if env is None else env
        return cls(
            enable_ipv4=parse_bool("EGRESS_ENABLE_IPV4", env.get("EGRESS_ENABLE_IPV4", "true")),
            enable_ipv6=parse_bool("EGRESS_ENABLE_IPV6", env.get("EGRESS_ENABLE_IPV6", "true")),
            namespace=env.get("EGRESS_NAMESPACE", "egressgateway-system"),
        )
