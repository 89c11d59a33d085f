# The image the manifests use (egressgateway:dev): controller, webhook, agent and the CNI installer.
#   docker build -t egressgateway:dev .
# Same content as `make image` (devtools/image.py, no Docker needed; docs/image.md): Debian bookworm's
# python3, iptables, ipset, nftables, iproute2 and conntrack, user 65532, the wheels pinned in
# hack/image-requirements.txt and our package, under /usr/local (Debian's python3 path for pip installs).

# Builder: Debian's python3 with pip (not in the final image) installs everything into /install.
FROM debian:bookworm-slim AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-pip \
 && rm -rf /var/lib/apt/lists/*
ENV SOURCE_DATE_EPOCH=1700000000 PIP_NO_CACHE_DIR=1 PIP_BREAK_SYSTEM_PACKAGES=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY hack/image-requirements.txt ./
RUN python3 -m pip install --root /install --require-hashes -r image-requirements.txt
COPY setup.cfg pyproject.toml README.md ./
COPY egress_cni ./egress_cni
COPY webhook ./webhook
RUN python3 -m pip install --root /install --no-deps .

FROM debian:bookworm-slim
# The agent programs the node's data path with these; the CNI plugin needs iproute2 only.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 iptables ipset nftables iproute2 conntrack \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/* \
 && echo "nonroot:x:65532:65532:nonroot:/nonexistent:/usr/sbin/nologin" >> /etc/passwd \
 && echo "nonroot:x:65532:" >> /etc/group
COPY --from=build /install/usr/local /usr/local
ENV PYTHONDONTWRITEBYTECODE=1
WORKDIR /
# Root by default: the agent (privileged) programs the node; controller and webhook set runAsUser 65532.
ENTRYPOINT []
CMD ["egress-controller", "--help"]
