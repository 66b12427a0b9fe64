#!/usr/bin/env bash
# The Docker engines weft is tested against, pinned in this one place.
#
#   scripts/engines.sh build current   build the current engine into build/engine-current
#                                      (dockerd, docker-proxy, containerd, shim, runc) from
#                                      the Go module proxy; a no-op when already built
#   scripts/engines.sh bindir NAME     print the directory to put first in PATH for NAME
#                                      ("debian" is Debian's docker.io: no directory)
#   scripts/engines.sh list            the engine matrix CI runs: NAME:FIREWALL_BACKEND ...
#
# Debian's docker.io (20.10.24) comes from apt (scripts/e2e-env.sh deps).
# The current engine cannot be downloaded here as binaries: dockerd lives in
# the Go module github.com/moby/moby/v2 since Engine 29, so it is built with
# go install, and so are containerd and runc (Debian's are too old for 29).
set -euo pipefail
cd "$(dirname "$0")/.."

# moby/v2 module versions map to Engine releases: beta.24 is a 29.8-era build
# (API 1.56). ENGINE_VERSION is what dockerd reports.
MOBY_MODULE=github.com/moby/moby/v2
MOBY_VERSION=v2.0.0-beta.24
ENGINE_VERSION=29.8.0
CONTAINERD_VERSION=v2.2.9
# runc v1.3.3 and v1.2.8 do not build from the module zip (a replace directory
# is missing from it); 1.3.2 does. Engine 29.5+ needs runc >= 1.2.
RUNC_VERSION=v1.3.2

# The matrix: every engine and firewall backend make test runs the e2e suite on.
MATRIX="debian:iptables current:iptables current:nftables"

export PATH="$PATH:/usr/local/go/bin"
root=$PWD/build/engine-current
stamp="$root/.versions"
want="$MOBY_VERSION $ENGINE_VERSION $CONTAINERD_VERSION $RUNC_VERSION"

build_current() {
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  if ! dpkg -s libseccomp-dev pkg-config >/dev/null 2>&1; then
    echo "engines: installing libseccomp-dev (runc links it)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libseccomp-dev pkg-config >/dev/null
  fi
  rm -rf "$root"
  mkdir -p "$root"
  local t0=$SECONDS
  echo "engines: building dockerd $ENGINE_VERSION ($MOBY_MODULE@$MOBY_VERSION), containerd $CONTAINERD_VERSION, runc $RUNC_VERSION into $root"
  GOBIN=$root CGO_ENABLED=0 go install -trimpath \
    -ldflags "-X $MOBY_MODULE/dockerversion.Version=$ENGINE_VERSION" \
    "$MOBY_MODULE/cmd/dockerd@$MOBY_VERSION" "$MOBY_MODULE/cmd/docker-proxy@$MOBY_VERSION"
  GOBIN=$root CGO_ENABLED=0 go install -trimpath -tags no_btrfs,no_devmapper,no_zfs \
    "github.com/containerd/containerd/v2/cmd/containerd@$CONTAINERD_VERSION" \
    "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION"
  # runc's go.mod has replace directives, so go install refuses it: build
  # from a copy of the module, without its vendor tree.
  local moddir src
  moddir=$(go mod download -json "github.com/opencontainers/runc@$RUNC_VERSION" | sed -n 's/.*"Dir": "\(.*\)",*/\1/p')
  src=$(mktemp -d)
  cp -r "$moddir/." "$src/"
  chmod -R u+w "$src"
  rm -rf "$src/vendor"
  (cd "$src" && CGO_ENABLED=1 go build -mod=mod -trimpath -tags seccomp -o "$root/runc" .)
  rm -rf "$src"
  echo "$want" >"$stamp"
  echo "engines: built in $((SECONDS - t0)) s"
}

case "${1:-}" in
  build)
    case "${2:-}" in
      current) build_current ;;
      debian) ;;
      *) echo "usage: $0 build current" >&2; exit 2 ;;
    esac ;;
  bindir)
    case "${2:-}" in
      current) echo "$root" ;;
      debian) echo "" ;;
      *) echo "engines: unknown engine ${2:-}" >&2; exit 2 ;;
    esac ;;
  list) echo "$MATRIX" ;;
  *) echo "usage: $0 build current | bindir NAME | list" >&2; exit 2 ;;
esac
