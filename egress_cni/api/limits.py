"""Bounds of the API's strings and lists: the CRDs' maxLength / maxItems (hack/gen_crds.py) and the
code that must stay inside them read them here. docs/api.md lists them with their reasons.

Strings follow what Kubernetes itself allows; lists are generous (a list is bounded so that one
object cannot make every reader walk an unbounded array, not to ration users: etcd's 1.5 MiB
object limit comes first for most of them).
"""

from __future__ import annotations

# strings
NAME = 253  # an object name (DNS subdomain): gateways, policies, nodes, pods
NAMESPACE = 63  # a namespace name (DNS label)
LABEL_VALUE = 63
LABEL_KEY = 317  # prefix (253) + "/" + name (63)
IP = 45  # the longest IP text: an IPv4-mapped IPv6 address, ffff:...:255.255.255.255
CIDR = IP + 4  # ".../128"
IP_RANGE = 2 * IP + 1  # a pool entry "<first>-<last>"
MAC = 17
MARK = 18  # "0x" and up to 16 hex digits
IFNAME = 15  # the kernel's IFNAMSIZ - 1
WORD = 63  # enum-like words written by our components (a node's status in a gateway, a selector policy)
CONDITION_TYPE, CONDITION_REASON, CONDITION_MESSAGE = 316, 1024, 32768  # metav1.Condition's

# lists
CIDRS = 4096  # destSubnet, podSubnet, extraCidr, pools, cluster CIDR lists
NODES = 65536  # lists with one entry per node (GKE's largest clusters are 65,000 nodes)
EIPS_PER_NODE = 4096
POLICIES_PER_EIP = 16384  # every policy of the cluster may share a gateway's default EIP
ENDPOINTS_PER_SLICE = 1000  # --max-endpoints-per-slice may not exceed it (default 100)
IPS_PER_ENDPOINT = 16  # a pod has one IP per family; room for more
SELECTOR_EXPRESSIONS = 64
SELECTOR_VALUES = 1024
CONDITIONS = 32
POD_CIDR_SOURCES = 16  # status.podCIDR keys: where pod CIDRs were read from (k8s, calico, ...)
