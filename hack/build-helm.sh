#!/usr/bin/env bash
# Build Helm from the Go module proxy (helm.sh/helm/v3), like the control plane (hack/build-kube.sh).
#
# Output: $EGW_HELM_CACHE/<version>/bin/helm; reused when present.
# Nothing here is committed; the script alone reproduces the build.
set -euo pipefail
# shellcheck source=hack/cached-build.sh
source "$(dirname "$0")/cached-build.sh"

HELM_VERSION="${EGW_HELM_VERSION:-v3.22.0}"
CACHE_ROOT="${EGW_HELM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/egressgateway/helm}"
OUT="$CACHE_ROOT/$HELM_VERSION"
BIN="$OUT/bin"

cached_or_go "$BIN/helm" "helm $HELM_VERSION"
export GOTOOLCHAIN=local CGO_ENABLED=0
mkdir -p "$BIN"
start=$(date +%s)
# go install writes to GOBIN directly; build into a scratch dir so a failed build leaves no partial binary.
scratch="$OUT/gobin.tmp"
rm -rf "$scratch"; mkdir -p "$scratch"
GOBIN="$scratch" go install -trimpath -ldflags "-s -w" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
mv "$scratch/helm" "$BIN/helm"
rm -rf "$scratch"
end=$(date +%s)
printf '{"helm": "%s", "cold_build_seconds": %d}\n' "$HELM_VERSION" $((end - start)) > "$OUT/build-info.json"
cat "$OUT/build-info.json"
