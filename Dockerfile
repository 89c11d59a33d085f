# The image the manifests use (egressgateway:dev): controller, webhook, agent and the CNI installer.
#   docker build -t egressgateway:dev .
FROM python:3.11-slim

# The agent programs the node's data path with these; the CNI plugin needs iproute2 only.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends iptables ipset iproute2 conntrack \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY setup.cfg pyproject.toml README.md ./
COPY egress_cni ./egress_cni
COPY webhook ./webhook
COPY plugin-bin ./plugin-bin
RUN pip install --no-cache-dir . && rm -rf /src/build

WORKDIR /
# Root by default: the agent (privileged) programs the node; controller and webhook set runAsUser 65532.
ENTRYPOINT []
CMD ["egress-controller", "--help"]
