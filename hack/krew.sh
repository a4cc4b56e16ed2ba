#!/usr/bin/env bash
# kubectl-pat as a krew plugin: archive + manifest.
#
#   hack/krew.sh [BASE_URL]   build kubectl-pat (release), pack it with the LICENSE into
#                             target/krew/kubectl-pat_<version>_<os>_<arch>.tar.gz and write
#                             target/krew/pat.yaml from cli/krew/pat.yaml.in: one platform
#                             entry for the archive, its URI under BASE_URL and its SHA-256.
#                             Prints the manifest's path.
#
# KUBECTL_PAT_BINARY packs a binary built elsewhere; KREW_OUT writes somewhere else than
# target/krew. Only this machine's platform is built: a release pipeline runs this once per platform
# and merges the entries. BASE_URL defaults to <repository in Cargo.toml>/releases/download
# (give the place the archives are uploaded to).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here/.."

repository=$(sed -n 's/^repository = "\(.*\)"/\1/p' Cargo.toml | head -1)
base_url=${1:-$repository/releases/download}
version=v$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
case $(uname -s) in Linux) os=linux ;; Darwin) os=darwin ;; *) echo "unsupported OS $(uname -s)" >&2; exit 1 ;; esac
case $(uname -m) in x86_64|amd64) arch=amd64 ;; aarch64|arm64) arch=arm64 ;; *) echo "unsupported arch $(uname -m)" >&2; exit 1 ;; esac

binary=${KUBECTL_PAT_BINARY:-}   # a binary built elsewhere (the tests pass their debug build)
if [[ -z $binary ]]; then
  cargo build --release --locked -q -p patrol-cli >&2
  binary=target/release/kubectl-pat
fi
out=${KREW_OUT:-target/krew}
stage=$out/stage
rm -rf "$stage"; mkdir -p "$stage"
cp "$binary" "$stage/kubectl-pat"; cp LICENSE "$stage/"
archive=kubectl-pat_${version}_${os}_${arch}.tar.gz
# Reproducible: fixed owner, mode and time, sorted entries.
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$stage" -czf "$out/$archive" kubectl-pat LICENSE
sha=$(sha256sum "$out/$archive" | cut -d' ' -f1)
platforms="  - selector:
      matchLabels: {os: $os, arch: $arch}
    uri: $base_url/$version/$archive
    sha256: $sha
    bin: kubectl-pat
    files:
    - {from: kubectl-pat, to: .}
    - {from: LICENSE, to: .}"
python3 - cli/krew/pat.yaml.in "$version" "$platforms" >"$out/pat.yaml" <<'PY'
import sys
text = open(sys.argv[1]).read()
body = "\n".join(l for l in text.splitlines() if not l.startswith("#"))
print(body.strip("\n").replace("@VERSION@", sys.argv[2]).replace("@PLATFORMS@", sys.argv[3]))
PY
rm -rf "$stage"
echo "$out/pat.yaml"
