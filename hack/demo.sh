#!/usr/bin/env bash
# The demo: a token's whole life on a local cluster, narrated.
#
#   local cluster with a node -> Patrol's images built and imported -> the Helm chart
#   (operator and token service as pods) -> a policy -> a PAT created as "alice" with
#   `kubectl pat create` (issued, revealed once, acknowledged) -> used with kubectl ->
#   exchanged for a JWT, by hand and by the exec-credential plugin -> a workload Job
#   exchanging as its ServiceAccount -> introspected -> revoked from the leaked token ->
#   refused everywhere.
#
# The kube-apiserver reaches the token service through the chart's Service (fixed
# ClusterIP 10.0.0.12, see hack/cluster.sh), for admission, TokenReview and the JWT
# authenticator's discovery. Everything started is stopped at the end; with
# PATROL_DEMO_KEEP=1 the cluster, the release and the objects are left running (stop them
# with `make cluster-down`).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here/.."

bold=$'\033[1m' dim=$'\033[2m' reset=$'\033[0m'
[[ -t 1 ]] || { bold='' dim='' reset=''; }
say() { printf '\n%s== %s%s\n' "$bold" "$*" "$reset"; }
note() { printf '%s   %s%s\n' "$dim" "$*" "$reset"; }
run() { printf '%s$ %s%s\n' "$bold" "$*" "$reset"; "$@" 2>&1 | sed 's/^/  /'; return "${PIPESTATUS[0]}"; }
# access_token: the access_token of an RFC 8693 answer on stdin, or the answer on stderr.
access_token() {
  python3 -c 'import json,sys
answer = sys.stdin.read()
try:
    print(json.loads(answer)["access_token"])
except (ValueError, KeyError):
    sys.exit("token exchange failed: " + answer)'
}
# mask TOKEN: what the demo prints of a secret: its start and its last four characters.
mask() { printf '%s…%s' "${1:0:14}" "${1: -4}"; }

[[ ${PATROL_USE_EXISTING_CLUSTER:-} == 1 ]] && {
  echo "the demo runs its own local cluster (it needs to configure the kube-apiserver); unset PATROL_USE_EXISTING_CLUSTER" >&2
  exit 2
}
export PATROL_CLUSTER_NODE=1

hack/ensure-tools.sh
python=$(hack/ensure-tools.sh python)   # a Python with PyJWT, for examples/clients/verify_jwt.py

started=
hack/cluster.sh status || started=1
say "Starting a local cluster: etcd, kube-apiserver, kube-controller-manager, and a node"
note "(kubelet, kube-proxy, kube-scheduler, containerd + runc, CNI bridge, CoreDNS)"
kubeconfig=$(hack/cluster.sh up)
# shellcheck disable=SC1091
source "$(dirname "$kubeconfig")/env"
CLUSTER_CA=$PATROL_CA                       # the apiserver's CA
export PATROL_URL=$PATROL_ISSUER            # the token service, through its Service
export PATROL_CA=$PATROL_WEBHOOK_CA         # ... and the CA its certificate chains to
work=$PATROL_CLUSTER_DIR/demo
mkdir -p "$work"
cleanup() {
  local rc=$?
  if [[ ${PATROL_DEMO_KEEP:-} == 1 ]]; then
    say "Left running. export KUBECONFIG=$kubeconfig; make cluster-down when done"
    exit "$rc"
  fi
  if [[ -n $started ]]; then say "Stopping the cluster"; hack/cluster.sh down; else
    # Someone else's cluster: leave it as it was. Tokens go first, while the operator
    # still runs to remove their finalizers.
    local kc=("$PATROL_BIN/kubectl" --kubeconfig "$kubeconfig")
    "${kc[@]}" delete pat --all -n patrol-demo --timeout 30s >/dev/null 2>&1 || true
    "$PATROL_BIN/helm" --kubeconfig "$kubeconfig" uninstall patrol -n patrol-system --wait >/dev/null 2>&1 || true
    "${kc[@]}" delete tokenpolicy demo-policy --ignore-not-found >/dev/null 2>&1 || true
    "${kc[@]}" delete clusterrole,clusterrolebinding patrol-demo-introspection --ignore-not-found >/dev/null 2>&1 || true
    "${kc[@]}" delete namespace patrol-demo --ignore-not-found --wait=false >/dev/null 2>&1 || true
  fi
  exit "$rc"
}
trap cleanup EXIT
k() { "$PATROL_BIN/kubectl" --kubeconfig "$kubeconfig" "$@"; }
kubectl() { k "$@"; } # so the narrated commands read as people type them
helm() { "$PATROL_BIN/helm" --kubeconfig "$kubeconfig" "$@"; }
pat() { target/release/kubectl-pat --kubeconfig "$kubeconfig" "$@"; } # kubectl pat, from `make cli`
run kubectl get nodes -o wide
# A previous run's namespace may still be going away.
if [[ $(k get namespace patrol-demo -o jsonpath='{.status.phase}' 2>/dev/null) == Terminating ]]; then
  note "waiting for namespace patrol-demo (from an earlier run) to finish terminating"
  k wait --for=delete namespace/patrol-demo --timeout=120s >/dev/null
fi

say "Building Patrol's images (no Docker daemon: release binaries + umoci) and loading them into the node"
images=$(hack/images.sh patrol 2>"$work/images.log") || { cat "$work/images.log" >&2; exit 1; }
cargo build --release --locked -q -p patrol-cli   # kubectl-pat, for Alice
for archive in $images; do note "$(basename "$archive"): $(du -h "$archive" | cut -f1)"; done
# shellcheck disable=SC2086
hack/images.sh import $images 2>/dev/null

say "Installing the Helm chart into patrol-system"
note "Default values, plus the addresses this cluster's kube-apiserver was started with:"
sed 's/^/     /' "$PATROL_CHART_VALUES"
install_started=$SECONDS
run helm upgrade --install patrol charts/patrol --namespace patrol-system -f "$PATROL_CHART_VALUES" | sed '/^  NOTES:/,$d'
note "(helm prints NOTES.txt, a first-token walk-through; this demo is a longer one)"
k rollout status -n patrol-system deployment/patrol-operator --timeout 240s >/dev/null
k rollout status -n patrol-system deployment/patrol-webhook --timeout 240s >/dev/null
# Ready pods become a reachable Service once kube-proxy has their endpoints (about a second).
for _ in $(seq 1 150); do curl -fsS --max-time 2 --cacert "$PATROL_CA" "$PATROL_URL/readyz" >/dev/null 2>&1 && break; sleep 0.2; done
run kubectl get pods -n patrol-system -o wide
note "both Deployments Ready $(( SECONDS - install_started )) s after helm install"

say "An administrator sets a policy for the demo namespace"
k create namespace patrol-demo --dry-run=client -o yaml | k apply -f - >/dev/null
k label namespace patrol-demo patrol.dev/demo=true --overwrite >/dev/null
cat >"$work/policy.yaml" <<'YAML'
apiVersion: patrol.dev/v1alpha1
kind: TokenPolicy
metadata:
  name: demo-policy
  labels: {patrol.dev/demo: "true"}
spec:
  namespaceSelector: {matchLabels: {patrol.dev/demo: "true"}}
  expiration: {required: true, default: 30d, max: 90d}
  allowedScopes: ["read:*"]
  exchange: {maxTTL: 15m, audiences: [kubernetes-patrol]}
YAML
sed 's/^/  /' "$work/policy.yaml"
run kubectl apply -f "$work/policy.yaml"
note "...and says what each scope permits (TokenScopes, examples/token-scopes.yaml): a token with"
note "scopes may do only what its owner may AND what one of its scopes permits"
run kubectl apply -f examples/token-scopes.yaml
k create role pod-reader -n patrol-demo --verb get,list --resource pods --dry-run=client -o yaml | k apply -f - >/dev/null
k create rolebinding alice-pod-reader -n patrol-demo --role pod-reader --user alice \
  --dry-run=client -o yaml | k apply -f - >/dev/null
# Alice may manage her tokens, read pods, read and delete Secrets, and deploy the workload
# example; her tokens' scopes narrow that down.
k create role token-owner -n patrol-demo --verb get,list,watch,create,update,patch,delete \
  --resource personalaccesstokens.patrol.dev --dry-run=client -o yaml | k apply -f - >/dev/null
k create role token-reader -n patrol-demo --verb get,list,delete --resource secrets --dry-run=client -o yaml | k apply -f - >/dev/null
k create role workload-deployer -n patrol-demo --verb get,list,create,update,patch \
  --resource serviceaccounts,jobs.batch --dry-run=client -o yaml | k apply -f - >/dev/null
for role in token-owner token-reader workload-deployer; do
  k create rolebinding "alice-$role" -n patrol-demo --role "$role" --user alice --dry-run=client -o yaml | k apply -f - >/dev/null
done

say "Alice asks for a token that breaks the policy: admission says why"
cat >"$work/too-long.yaml" <<'YAML'
apiVersion: patrol.dev/v1alpha1
kind: PersonalAccessToken
metadata: {name: forever, namespace: patrol-demo}
spec:
  displayName: A token for ever
  scopes: ["write:pods"]
  expiration: {ttl: 400d}
YAML
run kubectl --as alice --as-group developers create -f "$work/too-long.yaml" && {
  echo "the policy should have refused this token" >&2; exit 1
} || true

say "Alice creates a token within the policy with kubectl pat (Patrol's kubectl plugin)"
note "It creates the PersonalAccessToken (the webhook records her as its owner), waits until the"
note "operator has issued the token, reads it once from its Secret, and acknowledges it, so the"
note "one-time Secret goes at once. The token goes to stdout because stdout is not a terminal here."
printf '%s$ PAT=$(kubectl pat --as alice create laptop --display-name "Alice'"'"'s laptop kubectl" --scope read:pods --ttl 7d --audience kubernetes-patrol)%s\n' "$bold" "$reset"
PAT=$(pat --as alice --as-group developers create laptop -n patrol-demo --display-name "Alice's laptop kubectl" \
  --scope read:pods --ttl 7d --audience kubernetes-patrol 2>"$work/create.err") || { cat "$work/create.err" >&2; exit 1; }
sed 's/^/  /' "$work/create.err"
note "PAT=$(mask "$PAT")   (scanner regex: \\bpatrol_[0-9A-Za-z]{12}_[0-9A-Za-z]{38}\\b)"
run kubectl get pat -n patrol-demo
run kubectl get pat laptop -n patrol-demo -o jsonpath='{.spec.owner}{"\n"}'
for _ in $(seq 1 50); do k get secret laptop-token -n patrol-demo >/dev/null 2>&1 || break; sleep 0.2; done
run kubectl get secret laptop-token -n patrol-demo || note "gone: the plaintext now exists only where Alice put it"

# A kubeconfig with the server only; the credential comes from --token.
cat >"$work/bare.kubeconfig" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters: [{name: local, cluster: {server: "https://127.0.0.1:$PATROL_APISERVER_PORT", certificate-authority: "$CLUSTER_CA"}}]
users: [{name: bearer, user: {}}]
contexts: [{name: bearer, context: {cluster: local, user: bearer, namespace: patrol-demo}}]
current-context: bearer
KUBECONFIG
kt() { "$PATROL_BIN/kubectl" --kubeconfig "$work/bare.kubeconfig" "$@"; }

say "kubectl with the PAT: the kube-apiserver asks patrol-webhook (TokenReview, through its Service) who it is"
printf '%s$ kubectl --token="$PAT" auth whoami%s\n' "$bold" "$reset"
kt --token="$PAT" auth whoami | sed 's/^/  /'
printf '%s$ kubectl --token="$PAT" get pods   # alice may, and the read:pods scope permits it%s\n' "$bold" "$reset"
kt --token="$PAT" get pods 2>&1 | sed 's/^/  /'
say "Scopes restrict: the kube-apiserver asks patrol-webhook (authorization webhook, before RBAC)"
run kubectl --as alice get secrets -n patrol-demo
printf '%s$ kubectl --token="$PAT" get secrets   # alice may, her read:pods token may not%s\n' "$bold" "$reset"
if kt --token="$PAT" get secrets 2>&1 | sed 's/^/  /'; then echo "the PAT may list Secrets" >&2; exit 1; fi

say "Exchange the PAT for a short-lived JWT (RFC 8693): examples/clients/exchange.sh"
printf '%s$ PAT=... examples/clients/exchange.sh kubernetes-patrol read:pods%s\n' "$bold" "$reset"
answer=$(PAT=$PAT examples/clients/exchange.sh kubernetes-patrol read:pods)
JWT=$(access_token <<<"$answer")
python3 -c 'import json,sys; a=json.load(sys.stdin); a["access_token"]=a["access_token"][:16]+"…"; print(json.dumps(a, indent=2))' \
  <<<"$answer" | sed 's/^/  /'
note "Any OIDC library verifies it from discovery + JWKS, e.g. PyJWT:"
printf '%s$ examples/clients/verify_jwt.py --issuer %s --audience kubernetes-patrol --ca $PATROL_CA <<<"$JWT"%s\n' \
  "$bold" "$PATROL_URL" "$reset"
"$python" examples/clients/verify_jwt.py --issuer "$PATROL_URL" --audience kubernetes-patrol --ca "$PATROL_CA" \
  <<<"$JWT" | sed 's/^/  /'
note "...and so does the kube-apiserver (structured authentication configuration):"
printf '%s$ kubectl --token="$JWT" auth whoami%s\n' "$bold" "$reset"
for _ in $(seq 1 40); do kt --token="$JWT" auth whoami >/dev/null 2>&1 && break; sleep 0.5; done
kt --token="$JWT" auth whoami 2>&1 | sed 's/^/  /'

say "Or let kubectl exchange by itself: kubectl pat as an exec-credential plugin"
note "kubectl pat kubeconfig writes a kubeconfig whose user runs 'kubectl pat credential': kubectl"
note "then sends only short-lived JWTs (cached 0600, refreshed before they expire), never the PAT."
(umask 077 && printf '%s\n' "$PAT" >"$work/laptop.pat")
printf '%s$ kubectl pat kubeconfig --token-file laptop.pat --issuer %s --audience kubernetes-patrol ... > patrol.kubeconfig%s\n' \
  "$bold" "$PATROL_URL" "$reset"
target/release/kubectl-pat kubeconfig --token-file "$work/laptop.pat" --issuer "$PATROL_URL" \
  --certificate-authority "$PATROL_CA" --audience kubernetes-patrol --cache-dir "$work/plugin-cache" \
  --server "https://127.0.0.1:$PATROL_APISERVER_PORT" --server-certificate-authority "$CLUSTER_CA" \
  --command "$PWD/target/release/kubectl-pat" >"$work/plugin.kubeconfig"
kp() { "$PATROL_BIN/kubectl" --kubeconfig "$work/plugin.kubeconfig" "$@"; }
printf '%s$ KUBECONFIG=patrol.kubeconfig kubectl pat whoami%s\n' "$bold" "$reset"
for _ in $(seq 1 20); do kp auth whoami >/dev/null 2>&1 && break; sleep 0.5; done
target/release/kubectl-pat --kubeconfig "$work/plugin.kubeconfig" whoami 2>&1 | sed 's/^/  /'
printf '%s$ KUBECONFIG=patrol.kubeconfig kubectl get pods -n patrol-demo%s\n' "$bold" "$reset"
kp get pods -n patrol-demo 2>&1 | sed 's/^/  /'

say "A workload exchanges a PAT as itself: examples/workload-exchange.yaml, as a real Job"
note "A ServiceAccount, a PAT that only it may exchange, and a Job whose pod trades the PAT"
note "(with its projected ServiceAccount token as actor) for a JWT and lists pods with it."
note "The one change: the image. No registry is reachable here, so the Job runs the local"
note "toolbox image (sh + curl) instead of docker.io/curlimages/curl."
toolbox=$(hack/images.sh refs | sed -n 's/^toolbox //p')
k create configmap patrol-ca -n patrol-demo --from-file=ca.crt="$PATROL_WEBHOOK_CA" --dry-run=client -o yaml | k apply -f - >/dev/null
sed "s#docker.io/curlimages/curl:8.11.1#$toolbox#" examples/workload-exchange.yaml >"$work/workload-exchange.yaml"
run kubectl --as alice --as-group developers apply -n patrol-demo -f "$work/workload-exchange.yaml"
k wait -n patrol-demo pat/reports --for jsonpath='{.status.phase}'=Active --timeout 60s >/dev/null
k wait -n patrol-demo job/build-report --for condition=Complete --timeout 180s >/dev/null || {
  echo "the workload Job did not complete:" >&2; k logs -n patrol-demo job/build-report >&2 || true; exit 1; }
printf '%s$ kubectl logs job/build-report   # the pods its JWT may list%s\n' "$bold" "$reset"
k logs -n patrol-demo job/build-report | python3 -c 'import json,sys
pods = json.load(sys.stdin)
print("  " + pods["kind"] + ":", ", ".join(p["metadata"]["name"] for p in pods["items"]))'
note "What that JWT says, exchanged the same way by hand (PyJWT verifies it):"
WORKLOAD_PAT=$(k get secret reports-pat -n patrol-demo -o jsonpath='{.data.token}' | base64 -d)
ACTOR=$(k create token report-builder -n patrol-demo --duration 10m)
printf '%s$ ACTOR_TOKEN=$(kubectl create token report-builder) PAT=... examples/clients/exchange.sh kubernetes-patrol%s\n' "$bold" "$reset"
WORKLOAD_JWT=$(ACTOR_TOKEN=$ACTOR PAT=$WORKLOAD_PAT examples/clients/exchange.sh kubernetes-patrol | access_token)
"$python" examples/clients/verify_jwt.py --issuer "$PATROL_URL" --audience kubernetes-patrol --ca "$PATROL_CA" \
  <<<"$WORKLOAD_JWT" | python3 -c 'import json,sys; c=json.load(sys.stdin); print("  sub:", c["sub"], "  act:", json.dumps(c.get("act")), "  scope:", c.get("scope"))'
note "Another ServiceAccount may not act with this PAT, neither as a Job..."
k create serviceaccount intruder -n patrol-demo --dry-run=client -o yaml | k apply -f - >/dev/null
python3 - "$work/workload-exchange.yaml" >"$work/intruder-job.yaml" <<'PY'
import sys
docs = open(sys.argv[1]).read().split("\n---\n")
job = next(d for d in docs if "kind: Job" in d)
print(job.replace("name: build-report", "name: build-report-intruder")
      .replace("serviceAccountName: report-builder", "serviceAccountName: intruder")
      .replace("backoffLimit: 2", "backoffLimit: 0"))
PY
k --as alice apply -n patrol-demo -f "$work/intruder-job.yaml" >/dev/null
k wait -n patrol-demo job/build-report-intruder --for condition=Failed --timeout 120s >/dev/null
printf '%s$ kubectl logs job/build-report-intruder%s\n' "$bold" "$reset"
k logs -n patrol-demo job/build-report-intruder 2>&1 | sed 's/^/  /'
note "...nor by hand:"
printf '%s$ ACTOR_TOKEN=$(kubectl create token intruder) PAT=... examples/clients/exchange.sh kubernetes-patrol%s\n' "$bold" "$reset"
ACTOR_TOKEN=$(k create token intruder -n patrol-demo --duration 10m) PAT=$WORKLOAD_PAT \
  examples/clients/exchange.sh kubernetes-patrol | sed 's/^/  /'

say "A service asks whether a token is good (RFC 7662): examples/clients/introspect.sh"
k create serviceaccount demo-api -n patrol-demo --dry-run=client -o yaml | k apply -f - >/dev/null
cat <<'YAML' | k apply -f - >/dev/null
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: patrol-demo-introspection}
rules: [{apiGroups: [patrol.dev], resources: [tokenintrospections], verbs: [create]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: patrol-demo-introspection}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: patrol-demo-introspection}
subjects: [{kind: ServiceAccount, name: demo-api, namespace: patrol-demo}]
YAML
CALLER=$(k create token demo-api -n patrol-demo --duration 10m)
introspect() { CALLER_TOKEN=$CALLER TOKEN=$1 examples/clients/introspect.sh; }
printf '%s$ CALLER_TOKEN=$(kubectl create token demo-api) TOKEN="$PAT" examples/clients/introspect.sh%s\n' "$bold" "$reset"
introspect "$PAT" | python3 -m json.tool | sed 's/^/  /'

say "Alice finds her token pasted in a chat, and revokes it without looking up which PAT it is"
printf '%s$ kubectl pat --as alice revoke --leaked -n patrol-demo <<<"$PAT"   # stdin: never in argv or history%s\n' "$bold" "$reset"
pat --as alice --as-group developers revoke --leaked -n patrol-demo <<<"$PAT" 2>&1 | sed 's/^/  /'
k wait -n patrol-demo pat/laptop --for jsonpath='{.status.phase}'=Revoked --timeout 30s >/dev/null
run kubectl get pat -n patrol-demo
revoked_at=$SECONDS
note "Patrol refuses it at once:"
printf '%s$ curl .../oauth2/introspect -d token="$PAT"; ... -d token="$JWT"%s\n' "$bold" "$reset"
printf '  PAT: %s\n  JWT: %s\n' "$(introspect "$PAT")" "$(introspect "$JWT")"
note "...and so does the kube-apiserver, which asks Patrol to authorize every request made with a"
note "Patrol token (its own 10 s authentication cache notwithstanding), the PAT and its JWT alike:"
for which in PAT JWT; do
  printf '%s$ kubectl --token="$%s" get pods%s\n' "$bold" "$which" "$reset"
  until ! kt --token="${!which}" get pods >/dev/null 2>&1; do
    (( SECONDS - revoked_at < 30 )) || { echo "a revoked $which still works after 30 s" >&2; exit 1; }
    sleep 0.2
  done
  kt --token="${!which}" get pods 2>&1 | sed 's/^/  /' || true
done
note "refused $(( SECONDS - revoked_at )) s after the revocation"
printf '%s$ PAT=... examples/clients/exchange.sh kubernetes-patrol%s\n' "$bold" "$reset"
PAT=$PAT examples/clients/exchange.sh kubernetes-patrol | sed 's/^/  /'

say "No token reached the pods' logs"
for deployment in patrol-operator patrol-webhook; do
  f=$work/$deployment.log
  k logs -n patrol-system "deployment/$deployment" --all-containers --prefix --tail=-1 >"$f" 2>&1 || true
  for pod in $(k get pods -n patrol-system -l "app.kubernetes.io/component=${deployment#patrol-}" -o name); do
    k logs -n patrol-system "$pod" --all-containers --prefix --tail=-1 >>"$f" 2>&1 || true
  done
  if grep -qF -e "$PAT" -e "$JWT" -e "$WORKLOAD_PAT" -e "$WORKLOAD_JWT" "$f"; then echo "a token leaked into $f" >&2; exit 1; fi
  note "$deployment: $(wc -l <"$f") log lines from its pods, no token"
done
say "Done"
