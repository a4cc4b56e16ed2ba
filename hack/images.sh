#!/usr/bin/env bash
# Builds Patrol's container images without a Docker daemon, as OCI archives, and imports
# them into the local node's containerd.
#
#   hack/images.sh patrol   patrol-operator and patrol-webhook from the release binaries
#                           -> target/images/<name>-<appVersion>.tar (prints their paths)
#   hack/images.sh node     what the local node itself runs: the pod sandbox (pause),
#                           CoreDNS, and a small toolbox (sh + curl) for example Jobs
#                           -> $PATROL_CACHE/images/ (built once, like the control plane)
#   hack/images.sh import ARCHIVE...   load archives into the local node's containerd
#   hack/images.sh refs     the image references the chart and the node use
#
# Each image is distroless-style: the binary, the shared libraries it links (copied from
# this machine, the same ones it was built against), CA certificates, passwd and group
# entries for uid/gid 65532 (nonroot), and nothing else: no shell, no package manager.
# Layers are assembled with umoci (Debian package `umoci`, installed when missing) and
# every file's time is set to SOURCE_DATE_EPOCH (default: the last commit), so the same
# inputs give the same layer digests.
#
# The Dockerfile at the repository root builds the same runtime for users' registries.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
cache=${PATROL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/patrol}
log() { printf '[images] %s\n' "$*" >&2; }

# The chart's appVersion is every Patrol image's tag, and the workspace version must agree.
app_version() {
  local chart cargo
  chart=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$repo/charts/patrol/Chart.yaml")
  cargo=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml")
  if [[ -z $chart || $chart != "$cargo" ]]; then
    log "charts/patrol/Chart.yaml appVersion ($chart) and Cargo.toml workspace version ($cargo) differ; release them together"
    exit 1
  fi
  echo "$chart"
}

# Where images come from. The chart's defaults name the Patrol repositories; the node's own
# images live under localhost/patrol/ and are never pulled.
PATROL_REGISTRY=${PATROL_REGISTRY:-ghcr.io/patrol-dev}
PAUSE_REF=localhost/patrol/pause:1.0
COREDNS_REF=localhost/patrol/coredns:$COREDNS_VERSION
TOOLBOX_REF=localhost/patrol/toolbox:1.0

need_tools() {
  local missing=()
  command -v umoci >/dev/null || missing+=(umoci)
  command -v gcc >/dev/null || missing+=(gcc libc6-dev)
  [[ -x /bin/busybox ]] || missing+=(busybox-static)
  [[ -f /etc/ssl/certs/ca-certificates.crt ]] || missing+=(ca-certificates)
  ((${#missing[@]})) || return 0
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 ||
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; }
  else
    log "missing ${missing[*]}: install them with your package manager"; exit 1
  fi
}

epoch() {
  if [[ -n ${SOURCE_DATE_EPOCH:-} ]]; then echo "$SOURCE_DATE_EPOCH"; return; fi
  git -C "$repo" log -1 --format=%ct 2>/dev/null || echo 0
}

# base_rootfs DIR: the files every image has (users, CA certificates, an empty /tmp).
base_rootfs() {
  local root=$1
  chmod 0755 "$root"
  mkdir -p "$root"/{etc/ssl/certs,tmp,home/nonroot}
  chmod 1777 "$root/tmp"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
  printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
  chown 65532:65532 "$root/home/nonroot"
}

# add_binary DIR FILE DEST: FILE at DEST in the image, with every shared library it links
# (and the dynamic loader) at the same path it has here.
add_binary() {
  local root=$1 file=$2 dest=$3 lib real
  install -D -m 0755 "$file" "$root$dest"
  # Debug sections (line tables of the release profile) stay out; symbols stay for backtraces.
  [[ -n ${strip:-} ]] && strip --strip-debug "$root$dest"
  if ldd "$file" >/dev/null 2>&1; then
    while read -r lib; do
      [[ -n $lib && -e $lib ]] || continue
      real=$(readlink -f "$lib")
      # Keep the file's mode: the dynamic loader must stay executable.
      install -D -m "$(stat -c %a "$real")" "$real" "$root$lib"
    done < <(ldd "$file" | sed -n 's/.*=> \(\/[^ ]*\).*/\1/p; s/^[[:space:]]*\(\/[^ ]*\) (.*/\1/p')
  fi
}

# pack DIR REF ARCHIVE ENTRYPOINT...: one-layer OCI image of DIR, run as 65532, written as
# an OCI archive whose index names it REF (for containerd) and its tag (for other tools).
pack() {
  local root=$1 ref=$2 archive=$3; shift 3
  local tag=${ref##*:} work t created
  work=$(mktemp -d)
  t=$(epoch)
  created=$(date -u -d "@$t" +%Y-%m-%dT%H:%M:%SZ)
  find "$root" -exec touch -h -d "@$t" {} +
  umoci init --layout "$work/layout"
  umoci new --image "$work/layout:$tag"
  umoci unpack --image "$work/layout:$tag" "$work/bundle" >/dev/null
  cp -a "$root/." "$work/bundle/rootfs/"
  umoci repack --image "$work/layout:$tag" --history.created "$created" \
    --history.created_by "hack/images.sh" "$work/bundle"
  local entry=() arg
  for arg in "$@"; do entry+=(--config.entrypoint "$arg"); done
  umoci config --image "$work/layout:$tag" --created "$created" \
    --os linux --architecture amd64 --config.user 65532:65532 --config.workingdir / \
    --config.env PATH=/usr/local/bin:/usr/bin:/bin --clear config.cmd "${entry[@]}" \
    --config.label "org.opencontainers.image.source=https://example.invalid/patrol" \
    --config.label "org.opencontainers.image.version=$tag" \
    --history.created_by "hack/images.sh config" --history.created "$created"
  umoci gc --layout "$work/layout"
  python3 - "$work/layout/index.json" "$ref" <<'PY'
import json, sys
path, ref = sys.argv[1], sys.argv[2]
index = json.load(open(path))
for m in index["manifests"]:
    m.setdefault("annotations", {})["io.containerd.image.name"] = ref
json.dump(index, open(path, "w"))
PY
  mkdir -p "$(dirname "$archive")"
  tar --sort=name --mtime="@$t" --owner=0 --group=0 --numeric-owner -C "$work/layout" -cf "$archive.tmp" .
  mv "$archive.tmp" "$archive"
  rm -rf "$work"
  log "$ref -> $archive ($(du -h "$archive" | cut -f1))"
}

build_patrol() {
  local version; version=$(app_version)
  need_tools
  log "building the release binaries"
  (cd "$repo" && cargo build --release --locked -q -p patrol-operator -p patrol-webhook --bins)
  local target=${CARGO_TARGET_DIR:-$repo/target}
  local out=$target/images bin root
  for bin in patrol-operator patrol-webhook; do
    root=$(mktemp -d)
    base_rootfs "$root"
    strip=1 add_binary "$root" "$target/release/$bin" "/usr/local/bin/$bin"
    pack "$root" "$PATROL_REGISTRY/$bin:$version" "$out/$bin-$version.tar" "/usr/local/bin/$bin"
    rm -rf "$root"
    echo "$out/$bin-$version.tar"
  done
}

build_node() {
  need_tools
  local out=$cache/images root src
  mkdir -p "$out"
  # The sandbox: a static C program that waits for a signal and reaps orphans.
  local pause_hash; pause_hash=$(sha256sum "$here/images/pause.c" | cut -c1-12)
  if [[ ! -f $out/pause-$pause_hash.tar ]]; then
    root=$(mktemp -d)
    base_rootfs "$root"
    gcc -static -Os -s -o "$root/pause" "$here/images/pause.c"
    pack "$root" "$PAUSE_REF" "$out/pause-$pause_hash.tar" /pause
    rm -rf "$root"
  fi
  ln -sf "pause-$pause_hash.tar" "$out/pause.tar"
  # CoreDNS, built by build-control-plane.sh with the plugins a cluster DNS needs.
  if [[ ! -f $out/coredns-$COREDNS_VERSION.tar ]]; then
    "$here/build-control-plane.sh" coredns
    local bin; bin=$("$here/build-control-plane.sh" path)
    root=$(mktemp -d)
    base_rootfs "$root"
    add_binary "$root" "$(readlink -f "$bin/coredns")" /coredns
    pack "$root" "$COREDNS_REF" "$out/coredns-$COREDNS_VERSION.tar" /coredns
    rm -rf "$root"
  fi
  ln -sf "coredns-$COREDNS_VERSION.tar" "$out/coredns.tar"
  # The toolbox for example Jobs: busybox's sh and text tools, and this machine's curl.
  local toolbox_hash; toolbox_hash=$( (busybox --help | head -1; curl --version | head -1; sha256sum "${BASH_SOURCE[0]}") | sha256sum | cut -c1-12)
  if [[ ! -f $out/toolbox-$toolbox_hash.tar ]]; then
    root=$(mktemp -d)
    base_rootfs "$root"
    install -D -m 0755 /bin/busybox "$root/bin/busybox"
    local applet
    for applet in sh cat sed grep tr cut head tail echo printf sleep date env ls test wc base64 nc timeout; do
      ln -s busybox "$root/bin/$applet"
    done
    add_binary "$root" "$(command -v curl)" /usr/bin/curl
    pack "$root" "$TOOLBOX_REF" "$out/toolbox-$toolbox_hash.tar" /bin/sh
    rm -rf "$root"
  fi
  ln -sf "toolbox-$toolbox_hash.tar" "$out/toolbox.tar"
  printf '%s\n' "$out/pause.tar" "$out/coredns.tar" "$out/toolbox.tar"
}

# import ARCHIVE...: into the k8s.io namespace of the local node's containerd.
import_images() {
  local cluster=${PATROL_CLUSTER_DIR:-$repo/.patrol/cluster} sock archive
  sock=$(sed -n 's/^export PATROL_CONTAINERD_SOCK=//p' "$cluster/env" 2>/dev/null || true)
  [[ -n $sock && -S $sock ]] || { log "no local node at $cluster (start it with: hack/cluster.sh up)"; exit 1; }
  for archive in "$@"; do
    ctr --address "$sock" -n k8s.io images import --no-unpack=false "$archive" >/dev/null
    log "imported $(basename "$archive")"
  done
}

case "${1:-}" in
  patrol) build_patrol ;;
  node) build_node ;;
  import) shift; import_images "$@" ;;
  refs)
    version=$(app_version)
    printf 'operator %s\nwebhook %s\npause %s\ncoredns %s\ntoolbox %s\n' \
      "$PATROL_REGISTRY/patrol-operator:$version" "$PATROL_REGISTRY/patrol-webhook:$version" \
      "$PAUSE_REF" "$COREDNS_REF" "$TOOLBOX_REF" ;;
  *) echo "usage: $0 patrol|node|import ARCHIVE...|refs" >&2; exit 2 ;;
esac
