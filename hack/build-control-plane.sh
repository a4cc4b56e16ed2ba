#!/usr/bin/env bash
# Builds the real control plane from Go modules and caches the binaries outside the clone.
#
#   kube-apiserver, kube-controller-manager, kubectl,
#   kube-scheduler, kubelet, kube-proxy               from k8s.io/kubernetes
#   etcd                                              from go.etcd.io/etcd/server/v3
#   helm                                              from helm.sh/helm/v3
#   krew (installs kubectl-pat from its manifest)     from sigs.k8s.io/krew
#   promtool (checks the chart's alerting rules)      from github.com/prometheus/prometheus
#   coredns (the local node's cluster DNS)            from github.com/coredns/coredns
#
# k8s.io/kubernetes points its staging modules (k8s.io/api, k8s.io/client-go, ...) at
# ./staging via replace directives, which Go ignores in a dependency. So we build from a
# small wrapper module that requires k8s.io/kubernetes and replaces every staging module
# with its published v0.Y.Z twin, read from that release's own go.mod.
#
# Output: $PATROL_CACHE/bin/<name>-<version>/<binary>, printed as the bin directory on the
# last line. Each component is rebuilt only when its pinned version changes.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

cache=${PATROL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/patrol}
mkdir -p "$cache/bin" "$cache/src"

log() { printf '[control-plane] %s\n' "$*" >&2; }

need_go() {
  command -v go >/dev/null || { log "go is required (https://go.dev/dl); none on PATH"; exit 1; }
}

# The Kubernetes binaries: the control plane, kubectl, and what a node runs.
kubernetes_bins=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy)

# build_kubernetes: every binary in kubernetes_bins in one go build (they share most packages).
build_kubernetes() {
  local v=$KUBERNETES_VERSION out="$cache/bin/kubernetes-$KUBERNETES_VERSION"
  local b have=1
  for b in "${kubernetes_bins[@]}"; do [[ -x $out/$b ]] || have=; done
  [[ -n $have ]] && return
  need_go
  local minor=${v#v1.}; minor=${minor%%.*}
  local patch=${v##*.}
  local staging="v0.$minor.$patch"
  local src="$cache/src/kubernetes-$v"
  rm -rf "$src"; mkdir -p "$src"
  log "fetching k8s.io/kubernetes@$v go.mod"
  local gomod
  gomod=$(cd "$src" && GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@$v" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  {
    echo "module patrol.dev/control-plane-build"
    echo
    echo "go $(go env GOVERSION | sed 's/^go//; s/\.[0-9]*$//')"
    echo
    echo "require k8s.io/kubernetes $v"
    echo
    echo "replace ("
    # Every `k8s.io/x => ./staging/src/k8s.io/x` becomes `k8s.io/x => k8s.io/x v0.Y.Z`.
    sed -n 's#^[[:space:]]*\(k8s\.io/[a-z0-9-]*\) => \./staging/src/.*#\t\1 => \1 '"$staging"'#p' "$gomod"
    echo ")"
  } >"$src/go.mod"
  local pkg=k8s.io/component-base/version cgo=k8s.io/client-go/pkg/version
  local date; date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  local ld="-s -w"
  for p in $pkg $cgo; do
    ld+=" -X $p.gitVersion=$v -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean -X $p.buildDate=$date"
  done
  log "building ${kubernetes_bins[*]} $v (first time: about 10 minutes on 2 cores)"
  mkdir -p "$out.tmp"
  (cd "$src" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "$ld" -o "$out.tmp/" \
    "${kubernetes_bins[@]/#/k8s.io/kubernetes/cmd/}")
  rm -rf "$out"; mv "$out.tmp" "$out"
}

# build_module NAME VERSION MODULE PACKAGE BINARY [LDFLAGS]: one binary from a wrapper module.
build_module() {
  local name=$1 v=$2 module=$3 pkg=$4 bin=$5 ld=${6:-}
  local out="$cache/bin/$name-$v"
  [[ -x $out/$bin ]] && return
  need_go
  local src="$cache/src/$name-$v"
  rm -rf "$src"; mkdir -p "$src"
  printf 'module patrol.dev/%s-build\n\ngo %s\n\nrequire %s %s\n' \
    "$name" "$(go env GOVERSION | sed 's/^go//; s/\.[0-9]*$//')" "$module" "$v" >"$src/go.mod"
  log "building $bin $v"
  mkdir -p "$out.tmp"
  (cd "$src" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "-s -w $ld" -o "$out.tmp/$bin" "$pkg")
  rm -rf "$out"; mv "$out.tmp" "$out"
}

build_etcd() {
  build_module etcd "$ETCD_VERSION" go.etcd.io/etcd/server/v3 go.etcd.io/etcd/server/v3 etcd
}

# krew, to install kubectl-pat from its plugin manifest the way users do (hack/krew.sh).
build_krew() {
  build_module krew "$KREW_VERSION" sigs.k8s.io/krew sigs.k8s.io/krew/cmd/krew krew
}

# promtool, to check the chart's PrometheusRule and the alert tests (make test).
build_promtool() {
  build_module promtool "$PROMETHEUS_VERSION" github.com/prometheus/prometheus \
    github.com/prometheus/prometheus/cmd/promtool promtool
}

build_helm() {
  build_module helm "$HELM_VERSION" helm.sh/helm/v3 helm.sh/helm/v3/cmd/helm helm \
    "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
}

# CoreDNS with only the plugins a cluster DNS uses (the full build pulls in every cloud
# provider's SDK): a main package of our own that links coremain and those plugins.
build_coredns() {
  local v=$COREDNS_VERSION out="$cache/bin/coredns-$COREDNS_VERSION"
  [[ -x $out/coredns ]] && return
  need_go
  local src="$cache/src/coredns-$v"
  rm -rf "$src"; mkdir -p "$src"
  printf 'module patrol.dev/coredns-build\n\ngo %s\n\nrequire github.com/coredns/coredns %s\n' \
    "$(go env GOVERSION | sed 's/^go//; s/\.[0-9]*$//')" "$v" >"$src/go.mod"
  cat >"$src/main.go" <<'GO'
// The local node's cluster DNS: CoreDNS linked with the plugins its Corefile uses.
package main

import (
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/ready"
)

func main() { coremain.Run() }
GO
  log "building coredns $v"
  mkdir -p "$out.tmp"
  (cd "$src" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "-s -w" -o "$out.tmp/coredns" .)
  rm -rf "$out"; mv "$out.tmp" "$out"
}

# Links every binary into one directory so callers add a single entry to PATH.
link_bin() {
  local dir="$cache/bin/current"
  mkdir -p "$dir"
  local b
  for b in "${kubernetes_bins[@]}"; do
    ln -sf "$cache/bin/kubernetes-$KUBERNETES_VERSION/$b" "$dir/$b"
  done
  ln -sf "$cache/bin/etcd-$ETCD_VERSION/etcd" "$dir/etcd"
  ln -sf "$cache/bin/helm-$HELM_VERSION/helm" "$dir/helm"
  ln -sf "$cache/bin/krew-$KREW_VERSION/krew" "$dir/krew"
  ln -sf "$cache/bin/promtool-$PROMETHEUS_VERSION/promtool" "$dir/promtool"
  [[ -x $cache/bin/coredns-$COREDNS_VERSION/coredns ]] && ln -sf "$cache/bin/coredns-$COREDNS_VERSION/coredns" "$dir/coredns"
  echo "$dir"
}

case "${1:-all}" in
  all) build_etcd; build_helm; build_krew; build_promtool; build_kubernetes; build_coredns; link_bin ;;
  kubernetes) build_kubernetes ;;
  coredns) build_coredns ;;
  etcd) build_etcd ;;
  helm) build_helm ;;
  krew) build_krew ;;
  promtool) build_promtool ;;
  path) link_bin ;;
  *) echo "usage: $0 [all|kubernetes|etcd|helm|krew|promtool|coredns|path]" >&2; exit 2 ;;
esac
