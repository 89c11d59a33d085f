#!/usr/bin/env bash
# System packages every tier needs (Debian bookworm; mmdebstrap builds the product image, `make image`). Idempotent; installs only what is missing.
set -euo pipefail
pkgs=(containerd runc containernetworking-plugins iptables ipset nftables iproute2 iperf3 busybox-static conntrack ethtool socat
      curl procps util-linux gcc libc6-dev faketime mmdebstrap)
missing=()
for p in "${pkgs[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p"); done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then echo "install-deps: need root to apt-get install ${missing[*]}" >&2; exit 1; fi
  echo "install-deps: apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
