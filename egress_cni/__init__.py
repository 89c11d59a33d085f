"""EgressGateway: stable egress IPs for Kubernetes workloads.

`egress_cni` holds everything that runs on nodes (the CNI plugin and the agent), the shared API
model (`egress_cni.api`, pure, no I/O) and the cluster controller. Keep this module import-free:
the CNI plugin imports the package on every pod start.
"""

__version__ = "0.1.0"
