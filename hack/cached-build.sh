# Sourced by hack/build-helm.sh and hack/build-flannel.sh: each builds one tool from the Go module
# proxy into a cache and reuses it.

# cached_or_go BINARY WHAT: exit 0 (the caller's script) when BINARY is already built, else make sure
# there is a Go to build it with.
cached_or_go() {
  if [[ -x "$1" ]]; then
    echo "$2 already built in $(dirname "$1")"
    exit 0
  fi
  command -v go >/dev/null || { echo "$(basename "$0" .sh): go not found (needs Go >= 1.26 and the Go module proxy)" >&2; exit 2; }
}
