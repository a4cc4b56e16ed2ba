#!/usr/bin/env bash
# The whole test suite, in three stages:
#   1. unit tests;
#   2. end-to-end tests against the control plane alone (real etcd, kube-apiserver,
#      kube-controller-manager), where Patrol's binaries run as host processes;
#   3. end-to-end tests on the local node: Patrol's images built and imported, the Helm
#      chart running both Deployments as pods, the workload example as a real Job, and the
#      demo.
# Each stage starts its cluster if none is running and stops it again afterwards (one you
# started with `make cluster-up` is left running). Every stage runs even when an earlier
# one failed, and the failures are listed at the end.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here/.."

hack/ensure-tools.sh || exit 1
failed=()
begin=$SECONDS
stage() { printf '\n== %s (%ds in)\n' "$*" $((SECONDS - begin)); }

# Test binaries that need the node; every other one in tests/tests runs without it.
node_tests=(pods demo)
api_tests=()
for f in tests/tests/*.rs; do
  name=$(basename "$f" .rs)
  [[ " ${node_tests[*]} " == *" $name "* ]] || api_tests+=("--test" "$name")
done
node_args=()
for name in "${node_tests[@]}"; do node_args+=("--test" "$name"); done

# with_cluster NODE COMMAND...: run COMMAND with that cluster up, stopping it after if
# this run started it.
with_cluster() {
  local node=$1; shift
  local started= rc=0
  if [[ ${PATROL_USE_EXISTING_CLUSTER:-} != 1 ]] && ! PATROL_CLUSTER_NODE=$node hack/cluster.sh status; then
    started=1
  fi
  PATROL_CLUSTER_NODE=$node hack/cluster.sh up >/dev/null || return 1
  PATROL_CLUSTER_NODE=$node "$@" || rc=$?
  if [[ -n $started ]]; then
    echo "== stopping the cluster this stage started"
    PATROL_CLUSTER_NODE=$node hack/cluster.sh down
  fi
  return "$rc"
}

stage "unit tests"
cargo test --workspace --lib --bins || failed+=("unit tests")

stage "end-to-end tests on the control plane (Patrol as host processes)"
cargo build --bins || failed+=("cargo build")   # the binaries the tests run as processes
with_cluster 0 cargo test -p patrol-e2e --no-fail-fast "${api_tests[@]}" -- --test-threads "${PATROL_TEST_THREADS:-4}" ||
  failed+=("end-to-end tests on the control plane")

stage "end-to-end tests on the node (Patrol as pods from its images and chart)"
with_cluster 1 cargo test -p patrol-e2e --no-fail-fast "${node_args[@]}" -- --test-threads 1 --nocapture ||
  failed+=("end-to-end tests on the node")

stage "done"
if ((${#failed[@]})); then
  printf 'FAILED: %s\n' "${failed[@]}"
  exit 1
fi
echo "all stages passed"
