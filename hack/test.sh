#!/usr/bin/env bash
# The whole test suite: unit tests, then end-to-end tests against a real kube-apiserver and
# etcd. Starts the local control plane if none is running and stops it again afterwards
# (a cluster you started with `make cluster-up` is left running).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here/.."

hack/ensure-tools.sh

started=
if [[ ${PATROL_USE_EXISTING_CLUSTER:-} != 1 ]] && ! hack/cluster.sh status; then
  started=1
  trap 'hack/cluster.sh down' EXIT
fi
hack/cluster.sh up >/dev/null

echo "== unit tests"
cargo test --workspace --lib --bins
echo "== end-to-end tests (real kube-apiserver + etcd)"
cargo build --bins   # the binaries the tests run as processes
cargo test --workspace --no-fail-fast --test '*' -- --test-threads "${PATROL_TEST_THREADS:-4}"
[[ -n $started ]] && echo "== stopping the control plane this run started"
