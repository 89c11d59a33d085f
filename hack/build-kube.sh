#!/usr/bin/env bash
# Build the test control plane from the Go module proxy: kube-apiserver, kube-controller-manager,
# kube-scheduler, kubelet, kube-proxy, kubectl (k8s.io/kubernetes) and etcd (go.etcd.io/etcd/server/v3).
#
# k8s.io/kubernetes requires its staging modules at the fake version v0.0.0 and maps them with
# `replace` lines that do not apply to dependents, so we generate a throwaway consumer module with
# one `replace k8s.io/<m> => k8s.io/<m> v0.<minor>.<patch>` per staging module, derived from that
# release's own go.mod (never a hand-kept list).
#
# Output: $EGW_KUBE_CACHE/<version>/bin/{etcd,kube-apiserver,...}; reused when complete.
# Nothing here is committed; the script alone reproduces the build.
set -euo pipefail

K8S_VERSION="${EGW_K8S_VERSION:-v1.36.3}"
CACHE_ROOT="${EGW_KUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/egressgateway/kube}"
OUT="$CACHE_ROOT/$K8S_VERSION"
BIN="$OUT/bin"
TOOLS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)

complete() {
  for t in "${TOOLS[@]}" etcd; do [[ -x "$BIN/$t" ]] || return 1; done
}
if complete; then
  echo "control plane $K8S_VERSION already built in $BIN"
  exit 0
fi

command -v go >/dev/null || { echo "build-kube: go not found (needs Go >= 1.26 and the Go module proxy)" >&2; exit 2; }
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
patch="${K8S_VERSION##*.}"
staging_version="v0.$minor.$patch"

work="$OUT/src"
rm -rf "$work"; mkdir -p "$work" "$BIN"
cd "$work"
start=$(date +%s)

# 1. Staging module list from the release's own go.mod.
gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
mapfile -t staging < <(awk '/^require|^\t/ {print}' "$gomod" | awk '$2 == "v0.0.0" && $1 ~ /^k8s\.io\// {print $1}' | sort -u)
[[ ${#staging[@]} -gt 20 ]] || { echo "build-kube: found only ${#staging[@]} staging modules in $gomod" >&2; exit 1; }
echo "build-kube: $K8S_VERSION with ${#staging[@]} staging modules at $staging_version"

{
  echo "module egressgateway.invalid/kubebins"
  echo
  echo "go 1.26.0"
  echo
  echo "godebug default=go1.26"
  echo
  echo "require k8s.io/kubernetes $K8S_VERSION"
  echo
  echo "replace ("
  for m in "${staging[@]}"; do echo "	$m => $m $staging_version"; done
  echo ")"
} > go.mod

# 2. Resolve and build. etcd comes at the version kubernetes itself pins, so it compiles with the same
#    grpc/otel graph.
for t in "${TOOLS[@]}"; do go get "k8s.io/kubernetes/cmd/$t@$K8S_VERSION"; done
etcd_version=$(go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3 2>/dev/null || true)
[[ -n "$etcd_version" ]] || { echo "build-kube: etcd server not in the kubernetes module graph" >&2; exit 1; }
go get "go.etcd.io/etcd/server/v3@$etcd_version"

LD="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION \
 -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor \
 -X k8s.io/component-base/version.gitTreeState=clean \
 -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION \
 -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"
for t in "${TOOLS[@]}"; do
  echo "build-kube: building $t"
  go build -trimpath -ldflags "$LD" -o "$BIN/$t.tmp" "k8s.io/kubernetes/cmd/$t"
  mv "$BIN/$t.tmp" "$BIN/$t"
done
echo "build-kube: building etcd $etcd_version"
go build -trimpath -ldflags "-s -w" -o "$BIN/etcd.tmp" go.etcd.io/etcd/server/v3
mv "$BIN/etcd.tmp" "$BIN/etcd"

end=$(date +%s)
printf '{"k8s": "%s", "etcd": "%s", "cold_build_seconds": %d}\n' "$K8S_VERSION" "$etcd_version" $((end - start)) > "$OUT/build-info.json"
cat "$OUT/build-info.json"
