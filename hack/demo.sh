#!/usr/bin/env bash
# The demo: a local control plane with Patrol's API installed and the examples applied.
# Leaves the control plane running only with PATROL_DEMO_KEEP=1 (then: make cluster-down).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here/.."

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

hack/ensure-tools.sh
started=
if [[ ${PATROL_USE_EXISTING_CLUSTER:-} != 1 ]] && ! hack/cluster.sh status; then started=1; fi
say "Starting a local control plane (etcd + kube-apiserver + kube-controller-manager on loopback)"
kubeconfig=$(hack/cluster.sh up)
if [[ -n $started && ${PATROL_DEMO_KEEP:-} != 1 ]]; then trap 'say "Stopping the control plane"; hack/cluster.sh down' EXIT; fi
if [[ ${PATROL_USE_EXISTING_CLUSTER:-} == 1 ]]; then kubectl=(kubectl); else
  # shellcheck disable=SC1091
  source "$(dirname "$kubeconfig")/env"; kubectl=("$PATROL_BIN/kubectl" --kubeconfig "$kubeconfig")
fi
"${kubectl[@]}" version | sed 's/^/  /'

say "Installing Patrol's CustomResourceDefinitions"
"${kubectl[@]}" apply --server-side -f crds/generated/
"${kubectl[@]}" wait --for condition=Established crd/personalaccesstokens.patrol.dev crd/tokenpolicies.patrol.dev

say "Applying the examples into namespace patrol-demo"
"${kubectl[@]}" create namespace patrol-demo --dry-run=client -o yaml | "${kubectl[@]}" apply -f - >/dev/null
for f in examples/*.yaml; do
  echo "  $f"
  "${kubectl[@]}" apply --server-side -n patrol-demo -f "$f" | sed 's/^/    /'
done

say "kubectl get pat -A"
"${kubectl[@]}" get pat -A
say "kubectl get tokenpolicies"
"${kubectl[@]}" get tokenpolicies
say "kubectl explain pat.spec.expiration"
"${kubectl[@]}" explain pat.spec.expiration | sed -n '1,20p'
if [[ ${PATROL_DEMO_KEEP:-} == 1 ]]; then
  say "Left running. Try: export KUBECONFIG=$kubeconfig; make cluster-down when done"
fi
