#!/usr/bin/env bash
# Build flanneld from the Go module proxy (github.com/flannel-io/flannel), like the control plane
# (hack/build-kube.sh), for the sandbox's `--cni flannel` (docs/sandbox.md).
#
# Version: $EGW_FLANNEL_VERSION, else the newest v0.28.x release the proxy lists
# (`go list -m -versions`), else (proxy unreachable) the newest v0.28.x already built here.
# Output: $EGW_FLANNEL_CACHE/<version>/bin/flanneld and build-info.json; reused when present.
# CGO_ENABLED=0 when the module builds that way, else with cgo (its udp backend has C in it).
# Nothing here is committed; the script alone reproduces the build.
set -euo pipefail
# shellcheck source=hack/cached-build.sh
source "$(dirname "$0")/cached-build.sh"

SERIES="v0.28"
CACHE_ROOT="${EGW_FLANNEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/egressgateway/flannel}"
MODULE=github.com/flannel-io/flannel

# newest_release <series> <version>...: the highest plain release (no pre-release) of the series.
newest_release() {
  local series="$1"; shift
  printf '%s\n' "$@" | grep -E "^${series//./\\.}\.[0-9]+$" | sort -V | tail -n 1
}

version="${EGW_FLANNEL_VERSION:-}"
if [[ -z "$version" ]] && command -v go >/dev/null; then
  # shellcheck disable=SC2046 # one word per version
  version=$(newest_release "$SERIES" $(GOTOOLCHAIN=local go list -m -versions "$MODULE" 2>/dev/null | cut -d' ' -f2-) || true)
fi
if [[ -z "$version" ]]; then
  # shellcheck disable=SC2046
  version=$(newest_release "$SERIES" $(ls "$CACHE_ROOT" 2>/dev/null) || true)
fi
[[ -n "$version" ]] || { echo "build-flannel: no $SERIES.x release of $MODULE (go list -m -versions failed, nothing cached)" >&2; exit 2; }

OUT="$CACHE_ROOT/$version"
BIN="$OUT/bin"
cached_or_go "$BIN/flanneld" "flanneld $version"
export GOTOOLCHAIN=local GOFLAGS=-mod=mod
start=$(date +%s)

# flanneld's main package imports every backend, and the tencentvpc one needs
# github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/vpc, whose zips the proxy does not serve
# (403 "not available"). So build the release's own main.go in a throwaway consumer module, with only
# that import removed (the vxlan backend the sandbox uses, and all others, stay).
src_dir=$(go mod download -json "$MODULE@$version" | python3 -c 'import json, sys
d = json.load(sys.stdin)
print(d.get("Dir") or sys.exit("build-flannel: go mod download: " + d.get("Error", "no source dir")))')
work="$OUT/src"
rm -rf "$work"; mkdir -p "$work" "$BIN"
cd "$work"
go_line=$(awk '$1 == "go" {print $2; exit}' "$src_dir/go.mod")
printf 'module egressgateway.invalid/flanneld\n\ngo %s\n\nrequire %s %s\n' "$go_line" "$MODULE" "$version" > go.mod
drop="\t_ \"$MODULE/pkg/backend/tencentvpc\""
[[ $(grep -cxF "$(printf "$drop")" "$src_dir/main.go") == 1 ]] || { echo "build-flannel: $version main.go: the tencentvpc import is not where expected" >&2; exit 1; }
grep -vxF "$(printf "$drop")" "$src_dir/main.go" > main.go
go mod tidy  # only what this main package imports: the tencentvpc zip is never fetched

LD="-s -w -X $MODULE/pkg/version.Version=$version"
cgo=0
if ! CGO_ENABLED=0 go build -trimpath -ldflags "$LD" -o "$BIN/flanneld.tmp" .; then
  echo "build-flannel: $version does not build with CGO_ENABLED=0, building with cgo"
  cgo=1
  CGO_ENABLED=1 go build -trimpath -ldflags "$LD" -o "$BIN/flanneld.tmp" .
fi
mv "$BIN/flanneld.tmp" "$BIN/flanneld"
end=$(date +%s)
printf '{"flannel": "%s", "cgo": %d, "without": ["pkg/backend/tencentvpc"], "cold_build_seconds": %d}\n' \
  "$version" "$cgo" $((end - start)) > "$OUT/build-info.json"
cat "$OUT/build-info.json"
