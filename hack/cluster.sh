#!/usr/bin/env bash
# Starts and stops Patrol's local cluster: a real etcd, kube-apiserver and
# kube-controller-manager, and (by default) a real node beside them: containerd, runc and
# the CNI plugins from Debian's packages, kubelet, kube-proxy and kube-scheduler from the
# pinned Kubernetes build, and CoreDNS (hack/node.sh has the node's layout).
#
#   hack/cluster.sh up      start in the background (idempotent); prints the kubeconfig path
#   hack/cluster.sh down    stop everything and remove the state
#   hack/cluster.sh env     print shell exports for the running cluster
#   hack/cluster.sh status  exit 0 when the cluster answers /readyz
#   hack/cluster.sh restart-apiserver [SECONDS]  stop the apiserver, wait, start it again
#
# Environment:
#   PATROL_CLUSTER_NODE         1 (default): with the node, so Deployments and Jobs run;
#                               0: the control plane alone on loopback (no pods), where
#                               Patrol's binaries run as host processes
#   PATROL_CLUSTER_DIR          state directory (default: <repo>/.patrol/cluster, or
#                               <repo>/.patrol/cluster-api without the node)
#   PATROL_USE_EXISTING_CLUSTER when 1, use the cluster $KUBECONFIG points at; start nothing
#   PATROL_TOKEN_WEBHOOK_TTL    apiserver cache TTL for Patrol's TokenReview answers (default 0s)
#   PATROL_AUTHZ_CACHE_TTL      apiserver cache TTL for Patrol's authorization answers (default:
#                               none cached, so a revoked token is refused at its next request)
#   PATROL_OWNER_PID            stop the cluster when this process exits (used by tests)
#
# The apiserver is started ready for Patrol: it asks Patrol to authenticate bearer tokens
# (--authentication-token-webhook-config-file, v1) and accepts JWTs from Patrol's issuer
# through a structured authentication configuration. Until Patrol runs, those simply fail
# over to the other authenticators; the admin client certificate always works.
#   - with the node, Patrol is the Helm chart's pods behind the fixed ClusterIP 10.0.0.12:
#     the apiserver's files name that address and a CA made here (patrol-ca), and the
#     Secret patrol-system/patrol-webhook-ca hands the CA to the chart, which signs its
#     serving certificate with it. `values.yaml` in the state directory holds the chart
#     values that go with this cluster (`helm install -f`).
#   - without it, Patrol is a host process at a loopback port reserved here, serving a
#     certificate generated here (PATROL_WEBHOOK_PORT, _CERT, _KEY in `env`).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
node=${PATROL_CLUSTER_NODE:-1}
if [[ $node == 1 ]]; then dir=${PATROL_CLUSTER_DIR:-$repo/.patrol/cluster}; else dir=${PATROL_CLUSTER_DIR:-$repo/.patrol/cluster-api}; fi
log() { printf '[cluster] %s\n' "$*" >&2; }
# shellcheck source=node.sh
source "$here/node.sh"
PAUSE_REF=$("$here/images.sh" refs | sed -n 's/^pause //p')

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

alive() { [[ -f $dir/$1.pid ]] && kill -0 "$(cat "$dir/$1.pid")" 2>/dev/null; }

ready() {
  [[ -f $dir/env ]] || return 1
  # shellcheck disable=SC1091
  source "$dir/env"
  curl -fsS --max-time 2 --cacert "$dir/pki/ca.crt" --cert "$dir/pki/admin.crt" --key "$dir/pki/admin.key" \
    "https://127.0.0.1:$PATROL_APISERVER_PORT/readyz" >/dev/null 2>&1
}

# sign NAME SUBJECT [SAN]: a key and a certificate signed by the cluster CA.
sign() {
  local name=$1 subject=$2 san=${3:-}
  local pki=$dir/pki ext=$dir/pki/$name.ext
  openssl ecparam -name prime256v1 -genkey -noout -out "$pki/$name.key" 2>/dev/null
  openssl req -new -key "$pki/$name.key" -subj "$subject" -out "$pki/$name.csr" 2>/dev/null
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    if [[ -n $san ]]; then
      echo "extendedKeyUsage=serverAuth"
      echo "subjectAltName=$san"
    else
      echo "extendedKeyUsage=clientAuth"
    fi
  } >"$ext"
  openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 30 -sha256 -extfile "$ext" -out "$pki/$name.crt" 2>/dev/null
  rm -f "$pki/$name.csr" "$ext"
}

make_pki() {
  local pki=$dir/pki
  mkdir -p "$pki"
  openssl ecparam -name prime256v1 -genkey -noout -out "$pki/ca.key" 2>/dev/null
  openssl req -x509 -new -key "$pki/ca.key" -subj "/CN=patrol-local-ca" -days 30 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$pki/ca.crt" 2>/dev/null
  sign apiserver "/CN=kube-apiserver" \
    "IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:10.0.0.1,IP:$NODE_IP"
  sign webhook "/CN=patrol-webhook" "IP:127.0.0.1,DNS:localhost"
  sign admin "/O=system:masters/CN=patrol-admin"
  openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
  chmod 600 "$pki"/*.key
}

write_kubeconfig() {
  local file=$1 server=$2 cert=$3 key=$4
  cat >"$file" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: patrol-local
  cluster:
    server: $server
    certificate-authority: $dir/pki/ca.crt
users:
- name: admin
  user:
    client-certificate: $cert
    client-key: $key
contexts:
- name: patrol-local
  context: {cluster: patrol-local, user: admin, namespace: default}
current-context: patrol-local
KUBECONFIG
}

# wait_for NAME SECONDS COMMAND...: poll until COMMAND succeeds, or show the log and fail.
wait_for() {
  local name=$1 seconds=$2; shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if ! alive "$name"; then
      log "$name exited; last lines of $dir/$name.log:"; tail -n 30 "$dir/$name.log" >&2; return 1
    fi
    if ((SECONDS > deadline)); then
      log "$name not ready after ${seconds}s; last lines of $dir/$name.log:"; tail -n 30 "$dir/$name.log" >&2; return 1
    fi
    sleep 0.5
  done
}

start() { # start NAME COMMAND...: run in its own session, log to NAME.log, record the pid.
  local name=$1; shift
  setsid "$@" >"$dir/$name.log" 2>&1 </dev/null &
  echo $! >"$dir/$name.pid"
}

up() {
  if [[ ${PATROL_USE_EXISTING_CLUSTER:-} == 1 ]]; then
    [[ -n ${KUBECONFIG:-} ]] || { log "PATROL_USE_EXISTING_CLUSTER=1 needs KUBECONFIG"; exit 1; }
    echo "$KUBECONFIG"; return
  fi
  if alive apiserver && ready; then
    echo "$dir/kubeconfig"; return
  fi
  down_quietly
  local bin; bin=$("$here/build-control-plane.sh" all)
  export PATROL_BIN=$bin
  if [[ $node == 1 ]]; then
    node_prerequisites
    local left; left=$(node_leftovers)
    if [[ -n $left ]]; then
      log "a local node is still running or left state behind (another clone's, or a crash):"
      printf '  %s\n' "$left" >&2
      log "stop it with hack/cluster.sh down in the clone that started it, or run: PATROL_CLUSTER_DIR=$dir hack/cluster.sh down"
      exit 1
    fi
  fi
  mkdir -p "$dir"
  make_pki
  local etcd_port etcd_peer api_port webhook_port kubelet_port kubelet_healthz_port
  etcd_port=$(free_port); etcd_peer=$(free_port); api_port=$(free_port); webhook_port=$(free_port)
  kubelet_port=$(free_port); kubelet_healthz_port=$(free_port)
  local ttl=${PATROL_TOKEN_WEBHOOK_TTL:-0s}
  # Where the kube-apiserver finds Patrol, and which CA vouches for it.
  local patrol_url patrol_ca
  if [[ $node == 1 ]]; then
    mkdir -p "$NODE_RUN"; echo "$dir" >"$NODE_RUN/owner"
    node_pki
    patrol_url=https://$PATROL_SERVICE_IP patrol_ca=$dir/pki/patrol-ca.crt
  else
    patrol_url=https://127.0.0.1:$webhook_port patrol_ca=$dir/pki/ca.crt
  fi
  cat >"$dir/env" <<ENV
export PATROL_CLUSTER_DIR=$dir
export PATROL_BIN=$bin
export PATROL_APISERVER_PORT=$api_port
export PATROL_CA=$dir/pki/ca.crt
export PATROL_JWT_AUDIENCE=kubernetes-patrol
export KUBECONFIG=$dir/kubeconfig
export PATROL_NODE=$node
export PATROL_ISSUER=$patrol_url
ENV
  if [[ $node != 1 ]]; then
    # Where tests run patrol-webhook as a host process, and the certificate it serves.
    cat >>"$dir/env" <<ENV
export PATROL_WEBHOOK_PORT=$webhook_port
export PATROL_WEBHOOK_URL=https://127.0.0.1:$webhook_port
export PATROL_WEBHOOK_CERT=$dir/pki/webhook.crt
export PATROL_WEBHOOK_KEY=$dir/pki/webhook.key
ENV
  else
    cat >>"$dir/env" <<ENV
export PATROL_NODE_NAME=$NODE_NAME
export PATROL_NODE_IP=$NODE_IP
export PATROL_CONTAINERD_SOCK=$CONTAINERD_SOCK
export PATROL_SERVICE_IP=$PATROL_SERVICE_IP
export PATROL_WEBHOOK_CA=$dir/pki/patrol-ca.crt
export PATROL_CHART_VALUES=$dir/values.yaml
ENV
    # The chart values that fit this cluster's apiserver flags (release "patrol" in
    # namespace "patrol-system"; the images are the ones `hack/images.sh patrol` builds).
    cat >"$dir/values.yaml" <<VALUES
webhook:
  service:
    clusterIP: $PATROL_SERVICE_IP
  exchange:
    issuer: $patrol_url
tls:
  selfManaged:
    caSecretName: patrol-webhook-ca
apiserver:
  tokenWebhook:
    url: $patrol_url/authenticate
VALUES
  fi
  write_kubeconfig "$dir/kubeconfig" "https://127.0.0.1:$api_port" "$dir/pki/admin.crt" "$dir/pki/admin.key"

  # Kube-apiserver -> Patrol: TokenReview webhook (a kubeconfig whose "cluster" is Patrol).
  cat >"$dir/token-webhook.kubeconfig" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: patrol
  cluster:
    server: $patrol_url/authenticate
    certificate-authority: $patrol_ca
users:
- name: kube-apiserver
  user: {}
contexts:
- name: patrol
  context: {cluster: patrol, user: kube-apiserver}
current-context: patrol
KUBECONFIG

  # Kube-apiserver -> Patrol: authorization of requests made with Patrol tokens (and only
  # those: the match condition looks for the token id that Patrol's TokenReview answers and
  # the JWT claim mappings below add). Before RBAC, so Patrol can deny what a token's scopes
  # do not permit, and revoked or expired tokens at once; otherwise RBAC decides.
  sed "s|$patrol_url/authenticate|$patrol_url/authorize|" "$dir/token-webhook.kubeconfig" >"$dir/authz-webhook.kubeconfig"
  local authz_ttl=${PATROL_AUTHZ_CACHE_TTL:-} authz_cache=false
  [[ -n $authz_ttl ]] && authz_cache=true
  {
    echo "apiVersion: apiserver.config.k8s.io/v1"
    echo "kind: AuthorizationConfiguration"
    echo "authorizers:"
    [[ $node == 1 ]] && printf '%s\n' "- type: Node" "  name: node"
    cat <<AUTHZ
- type: Webhook
  name: patrol
  webhook:
    timeout: 3s
    subjectAccessReviewVersion: v1
    matchConditionSubjectAccessReviewVersion: v1
    failurePolicy: Deny
    authorizedTTL: ${authz_ttl:-1s}
    cacheAuthorizedRequests: $authz_cache
    unauthorizedTTL: ${authz_ttl:-1s}
    cacheUnauthorizedRequests: $authz_cache
    connectionInfo:
      type: KubeConfigFile
      kubeConfigFile: $dir/authz-webhook.kubeconfig
    matchConditions:
    - expression: "has(request.extra) && 'patrol.dev/token-id' in request.extra"
- type: RBAC
  name: rbac
AUTHZ
  } >"$dir/authorization-config.yaml"

  # Kube-apiserver -> Patrol: exchanged JWTs, verified against Patrol's OIDC discovery + JWKS.
  local ca_pem; ca_pem=$(sed 's/^/        /' "$patrol_ca")
  cat >"$dir/authentication-config.yaml" <<AUTHN
apiVersion: apiserver.config.k8s.io/v1
kind: AuthenticationConfiguration
jwt:
- issuer:
    url: $patrol_url
    audiences: [kubernetes-patrol]
    certificateAuthority: |
$ca_pem
  claimMappings:
    username: {claim: sub, prefix: ""}
    groups: {claim: groups, prefix: ""}
    uid: {claim: uid}
    extra:
    - key: patrol.dev/token-id
      valueExpression: "has(claims.patrol_tid) ? claims.patrol_tid : ''"
    - key: patrol.dev/scopes
      valueExpression: "has(claims.scope) ? claims.scope : ''"
AUTHN

  log "starting etcd on 127.0.0.1:$etcd_port"
  start etcd "$bin/etcd" --name patrol --data-dir "$dir/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-cluster "patrol=http://127.0.0.1:$etcd_peer" --unsafe-no-fsync --quota-backend-bytes 4294967296 \
    --log-level warn
  wait_for etcd 30 curl -fsS "http://127.0.0.1:$etcd_port/health"

  log "starting kube-apiserver on 127.0.0.1:$api_port"
  local api_args=(
    --etcd-servers "http://127.0.0.1:$etcd_port"
    --secure-port "$api_port"
    --cert-dir "$dir/pki" --tls-cert-file "$dir/pki/apiserver.crt" --tls-private-key-file "$dir/pki/apiserver.key"
    --client-ca-file "$dir/pki/ca.crt"
    --service-account-issuer https://kubernetes.default.svc.cluster.local
    --service-account-key-file "$dir/pki/sa.pub" --service-account-signing-key-file "$dir/pki/sa.key"
    --service-cluster-ip-range 10.0.0.0/24
    --authentication-token-webhook-config-file "$dir/token-webhook.kubeconfig"
    --authentication-token-webhook-version v1
    --authentication-token-webhook-cache-ttl "$ttl"
    --authentication-config "$dir/authentication-config.yaml"
    --authorization-config "$dir/authorization-config.yaml"
    --profiling=false --v=1
  )
  if [[ $node == 1 ]]; then
    node_apiserver_args
  else
    api_args+=(--bind-address 127.0.0.1 --advertise-address 127.0.0.1
      --endpoint-reconciler-type none)
  fi
  # Kept so `restart-apiserver` starts it again exactly the same way.
  printf '%s\n' "$bin/kube-apiserver" "${api_args[@]}" >"$dir/apiserver.args"
  start apiserver "$bin/kube-apiserver" "${api_args[@]}"
  wait_for apiserver 120 ready

  log "starting kube-controller-manager"
  # Without a node, the few controllers the API needs; with one, the usual set (node
  # lifecycle lifts the not-ready taint; deployments, jobs, endpoint slices, disruption,
  # the kube-root-ca.crt ConfigMap that projected token volumes mount, ...).
  local controllers=namespace,garbagecollector,serviceaccount,clusterrole-aggregation
  [[ $node == 1 ]] && controllers='*'
  start controller-manager "$bin/kube-controller-manager" \
    --kubeconfig "$dir/kubeconfig" --bind-address 127.0.0.1 --secure-port 0 --leader-elect=false \
    --controllers "$controllers" --service-cluster-ip-range "$SERVICE_CIDR" \
    --service-account-private-key-file "$dir/pki/sa.key" --root-ca-file "$dir/pki/ca.crt" \
    --use-service-account-credentials=false --v=1
  # The default ServiceAccount appearing proves the controllers run.
  wait_for controller-manager 60 "$bin/kubectl" --kubeconfig "$dir/kubeconfig" get serviceaccount default -n default

  if [[ $node == 1 ]]; then
    node_config
    node_network
    node_start "$bin"
    # The CA the apiserver already trusts for Patrol, handed to the chart.
    "$bin/kubectl" --kubeconfig "$dir/kubeconfig" create namespace patrol-system >/dev/null
    "$bin/kubectl" --kubeconfig "$dir/kubeconfig" -n patrol-system create secret tls patrol-webhook-ca \
      --cert "$dir/pki/patrol-ca.crt" --key "$dir/pki/patrol-ca.key" >/dev/null
  fi

  if [[ -n ${PATROL_OWNER_PID:-} ]]; then
    # Stop the cluster when the process that asked for it is gone, even if it was killed.
    setsid bash -c "while kill -0 $PATROL_OWNER_PID 2>/dev/null; do sleep 1; done; PATROL_CLUSTER_NODE=$node PATROL_CLUSTER_DIR='$dir' '$here/cluster.sh' down" \
      >/dev/null 2>&1 </dev/null &
  fi
  log "ready: kubectl --kubeconfig $dir/kubeconfig get --raw /version"
  echo "$dir/kubeconfig"
}

down_quietly() {
  local name pid
  # The node goes first, found by its fixed names (also after a crash); then the control plane.
  if [[ $node == 1 && ( -f $dir/containerd.pid || -n $(node_leftovers) ) ]]; then
    if [[ -f $NODE_RUN/owner && $(cat "$NODE_RUN/owner") != "$dir" && -d $(cat "$NODE_RUN/owner") ]]; then
      log "the local node belongs to $(cat "$NODE_RUN/owner"); leaving it alone"
    else
      [[ -z ${PATROL_BIN:-} && -f $dir/env ]] && PATROL_BIN=$(sed -n 's/^export PATROL_BIN=//p' "$dir/env")
      node_down
    fi
  fi
  for name in controller-manager apiserver etcd; do
    if [[ -f $dir/$name.pid ]]; then
      pid=$(cat "$dir/$name.pid")
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    fi
  done
  for name in controller-manager apiserver etcd; do
    if [[ -f $dir/$name.pid ]]; then
      pid=$(cat "$dir/$name.pid")
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -KILL -- "-$pid" 2>/dev/null || true
    fi
  done
  rm -rf "$dir"
}

# Stops kube-apiserver and starts it again with the same flags (etcd keeps the state), for
# tests of what happens to Patrol when the apiserver goes away mid-flight.
restart_apiserver() {
  alive apiserver || { log "no apiserver running at $dir"; exit 1; }
  local pid; pid=$(cat "$dir/apiserver.pid")
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  sleep "${1:-0}"
  local args=(); mapfile -t args <"$dir/apiserver.args"
  start apiserver "${args[@]}"
  wait_for apiserver 120 ready
  log "kube-apiserver restarted"
}

case "${1:-}" in
  up) up ;;
  restart-apiserver) restart_apiserver "${2:-0}" ;;
  down)
    [[ ${PATROL_USE_EXISTING_CLUSTER:-} == 1 ]] && exit 0
    down_quietly; log "stopped" ;;
  env) [[ -f $dir/env ]] && cat "$dir/env" || { log "no cluster at $dir; run: make cluster-up"; exit 1; } ;;
  status) alive apiserver && ready ;;
  *) echo "usage: $0 up|down|env|status|restart-apiserver [seconds]" >&2; exit 2 ;;
esac
