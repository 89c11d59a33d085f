"""Installation settings the rules depend on: flags > environment > the settings file > defaults.

`egress-webhook` (webhook/main.py) resolves them once, from its flags, its environment and the
installation's settings file (`egress_cni.settings`, the controller's and agents' reader too), and
hands the result to its gunicorn workers as EGRESS_ENABLE_IPV4/6, which `from_env` reads there.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from egress_cni import settings

IPV4_ENV, IPV6_ENV = "EGRESS_ENABLE_IPV4", "EGRESS_ENABLE_IPV6"


def parse_bool(name: str, text: str) -> bool:
    try:
        return settings.parse_bool(text)
    except ValueError:
        raise ValueError(f"{name}={text!r}: expected true or false") from None


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
            enable_ipv4=parse_bool(IPV4_ENV, env.get(IPV4_ENV, "true")),
            enable_ipv6=parse_bool(IPV6_ENV, env.get(IPV6_ENV, "true")),
            namespace=env.get("EGRESS_NAMESPACE", "egressgateway-system"),
        )

    @classmethod
    def layered(cls, installed: settings.Settings, env: Mapping[str, str], *, enable_ipv4: str | None = None,
                enable_ipv6: str | None = None, namespace: str = "egressgateway-system") -> WebhookConfig:
        """Each family from its flag (true/false text), else its variable, else the file's
        enableIPv4/enableIPv6, else on. Raises ValueError naming the flag, variable or key."""
        def family(flag: str | None, flag_name: str, variable: str, configured: bool | None) -> bool:
            chosen = None if flag is None else parse_bool(flag_name, flag)
            return settings.layered(chosen, env, variable, settings.parse_bool, True if configured is None else configured)

        return cls(
            enable_ipv4=family(enable_ipv4, "--enable-ipv4", IPV4_ENV, installed.families.ipv4),
            enable_ipv6=family(enable_ipv6, "--enable-ipv6", IPV6_ENV, installed.families.ipv6),
            namespace=namespace,
        )

    def to_env(self) -> dict[str, str]:
        """What `from_env` reads back in a gunicorn worker."""
        return {IPV4_ENV: str(self.enable_ipv4).lower(), IPV6_ENV: str(self.enable_ipv6).lower(), "EGRESS_NAMESPACE": self.namespace}
