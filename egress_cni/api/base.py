"""What the API modules share: names the reference API fixes, and the envelope of every kind."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from egress_cni.api import API_VERSION
from egress_cni.api.errors import join
from egress_cni.api.meta import Condition, ObjectMeta, Raw
from egress_cni.api.names import LABEL_POLICY_NAME as LABEL_POLICY_NAME  # re-exported with the model's names
from egress_cni.api.selectors import LabelSelector

ALLOCATOR_DEFAULT = "default"
ALLOCATOR_RR = "rr"
ALLOCATORS = (ALLOCATOR_DEFAULT, ALLOCATOR_RR)

LABEL_NAMESPACE_DEFAULT_GATEWAY = "spidernet.io/egressgateway-default"
FINALIZER_GATEWAY = "egressgateway.spidernet.io/egressgateway"
# Gateway annotation: EIPs that policies name may be shared by EgressPolicies of several namespaces.
ANNOTATION_ALLOW_EIP_SHARING = "egressgateway.spidernet.io/allow-eip-sharing"
# The label the API server puts on every namespace (its name); namespace selectors may use it.
LABEL_NAMESPACE_NAME = "kubernetes.io/metadata.name"
FINALIZER_TUNNEL = "egressgateway.spidernet.io/egresstunnel"
CLUSTER_INFO_NAME = "default"

TUNNEL_PHASES = ("Pending", "Init", "Failed", "Ready", "HeartbeatTimeout", "NodeNotReady")



def selector_at(raw: Raw, key: str, path: str) -> LabelSelector | None:
    value = raw.get(key)
    return None if value is None else LabelSelector.parse(value, join(path, key))


def conditions_dict(conditions: tuple[Condition, ...]) -> list[dict[str, Any]]:
    return [c.to_dict() for c in conditions]


@dataclass(frozen=True)
class Resource:
    KIND: ClassVar[str] = ""
    PLURAL: ClassVar[str] = ""
    SHORT_NAME: ClassVar[str] = ""
    NAMESPACED: ClassVar[bool] = False

    metadata: ObjectMeta

    def _envelope(self) -> dict[str, Any]:
        return {"apiVersion": API_VERSION, "kind": self.KIND, "metadata": self.metadata.to_dict()}

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError
