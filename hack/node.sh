# shellcheck shell=bash
# The local cluster's node, sourced by hack/cluster.sh: containerd, runc and the CNI
# plugins from Debian's packages; kubelet, kube-proxy and kube-scheduler from the pinned
# Kubernetes build; CoreDNS as a Deployment.
#
# Everything lives on names and addresses this file owns, so `down` can find and remove
# it even when the state directory is gone (a crash, a deleted clone):
#
#   node address   10.200.0.1/24 on the bridge patrol-node0 (the kubelet refuses loopback;
#                  this kernel has no dummy links, an empty bridge serves)
#   pods           10.244.0.0/24 on the CNI bridge patrol-cni0 (bridge + host-local)
#   services       10.0.0.0/24, routed to patrol-node0; kube-proxy (iptables) DNATs them
#   cluster DNS    10.0.0.10 (CoreDNS, cluster.local only: it forwards nothing)
#   Patrol         10.0.0.12, the fixed ClusterIP the kube-apiserver's token webhook and
#                  JWT authenticator are pointed at before the chart is installed. Like
#                  the DNS address it sits in the range's lower band, which the apiserver
#                  keeps for static addresses: a Service created first (the chart's own
#                  operator-metrics Service, say) can take any upper-band address
#   runtime        /run/patrol-node/ (containerd and runc state, sockets, CNI IPAM)
#
# Pods reach each other, the node and services; a FORWARD rule rejects anything from the
# pod range to elsewhere, so no pod traffic leaves the machine.

NODE_NAME=patrol-node
NODE_BRIDGE=patrol-node0
NODE_IP=10.200.0.1
POD_BRIDGE=patrol-cni0
POD_CIDR=10.244.0.0/16
POD_SUBNET=10.244.0.0/24
SERVICE_CIDR=10.0.0.0/24
DNS_IP=10.0.0.10
PATROL_SERVICE_IP=10.0.0.12
NODE_RUN=/run/patrol-node
CONTAINERD_SOCK=$NODE_RUN/containerd.sock

# node_prerequisites: the Debian packages and kernel settings a node needs. Installs the
# packages when missing (as root, with apt); fails with what to do otherwise.
node_prerequisites() {
  local missing=() tool pkg
  for tool in containerd:containerd ctr:containerd runc:runc iptables:iptables ip:iproute2 \
    conntrack:conntrack umoci:umoci gcc:gcc; do
    command -v "${tool%%:*}" >/dev/null || missing+=("${tool##*:}")
  done
  [[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local && -x /usr/lib/cni/loopback ]] ||
    missing+=(containernetworking-plugins)
  [[ -x /bin/busybox ]] || missing+=(busybox-static)
  if ((${#missing[@]})); then
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
      log "installing ${missing[*]} (Debian packages the node needs)"
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } >/dev/null ||
        { log "apt-get install ${missing[*]} failed"; return 1; }
    else
      log "the node needs ${missing[*]}: install them (apt-get install ${missing[*]}) or run with PATROL_CLUSTER_NODE=0"
      return 1
    fi
  fi
  [[ $(id -u) == 0 ]] || { log "the node needs root (mounts, cgroups, iptables); run as root or with PATROL_CLUSTER_NODE=0"; return 1; }
  [[ -d /proc/sys/net/bridge ]] || modprobe br_netfilter 2>/dev/null || true
  [[ -d /proc/sys/net/bridge ]] ||
    { log "br_netfilter is not loaded (modprobe br_netfilter); Services between pods need it"; return 1; }
}

# node_network: the node's address, the routes to services and the FORWARD guard.
node_network() {
  ip link add "$NODE_BRIDGE" type bridge
  ip addr add "$NODE_IP/24" dev "$NODE_BRIDGE"
  ip link set "$NODE_BRIDGE" up
  ip route add "$SERVICE_CIDR" dev "$NODE_BRIDGE" src "$NODE_IP"
  printf 'ip_forward=%s\nbridge_nf=%s\n' "$(cat /proc/sys/net/ipv4/ip_forward)" \
    "$(cat /proc/sys/net/bridge/bridge-nf-call-iptables)" >"$NODE_RUN/sysctl.saved"
  echo 1 >/proc/sys/net/ipv4/ip_forward
  echo 1 >/proc/sys/net/bridge/bridge-nf-call-iptables
  iptables -N PATROL-NODE
  iptables -A PATROL-NODE -s "$POD_CIDR" -d "$POD_CIDR" -j ACCEPT
  iptables -A PATROL-NODE -s "$POD_CIDR" -d "$NODE_IP" -j ACCEPT
  iptables -A PATROL-NODE -s "$POD_CIDR" -j REJECT --reject-with icmp-net-prohibited
  iptables -I FORWARD 1 -j PATROL-NODE
}

node_pki() {
  sign kubelet "/CN=$NODE_NAME" "IP:$NODE_IP,DNS:$NODE_NAME"
  sign node "/O=system:nodes/CN=system:node:$NODE_NAME"
  sign kube-proxy "/CN=system:kube-proxy"
  sign scheduler "/CN=system:kube-scheduler"
  sign apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
  # The CA that signs the Patrol webhook's serving certificate. It exists before the chart
  # does, so the kube-apiserver's token webhook and JWT authenticator can trust it from
  # their first start; the chart signs its certificate with it (tls.selfManaged.caSecretName).
  local pki=$dir/pki
  openssl ecparam -name prime256v1 -genkey -noout -out "$pki/patrol-ca.key" 2>/dev/null
  openssl req -x509 -new -key "$pki/patrol-ca.key" -subj "/CN=patrol-webhook-ca" -days 3650 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$pki/patrol-ca.crt" 2>/dev/null
  chmod 600 "$pki"/*.key
}

node_config() {
  local n=$dir/node
  mkdir -p "$n/cni" "$NODE_RUN"
  cat >"$n/containerd.toml" <<TOML
version = 2
root = "$n/containerd"
state = "$NODE_RUN/containerd"
[grpc]
  address = "$CONTAINERD_SOCK"
[ttrpc]
  address = "$CONTAINERD_SOCK.ttrpc"
[debug]
  level = "warn"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_REF"
  # The sandbox lacks CAP_SYS_RESOURCE: a negative oom_score_adj would be refused.
  restrict_oom_score_adj = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$NODE_RUN/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$n/cni"
TOML
  cat >"$n/cni/10-patrol.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "patrol",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$POD_BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$NODE_RUN/ipam",
        "ranges": [[{"subnet": "$POD_SUBNET", "gateway": "${POD_SUBNET%0/24}1"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    }
  ]
}
JSON
  # No upstream resolver: the cluster resolves its own names and nothing else.
  printf '# the local cluster has no upstream DNS\n' >"$n/resolv.conf"
  write_kubeconfig "$n/kubelet.kubeconfig" "https://$NODE_IP:$api_port" "$dir/pki/node.crt" "$dir/pki/node.key"
  write_kubeconfig "$n/kube-proxy.kubeconfig" "https://$NODE_IP:$api_port" "$dir/pki/kube-proxy.crt" "$dir/pki/kube-proxy.key"
  write_kubeconfig "$n/scheduler.kubeconfig" "https://$NODE_IP:$api_port" "$dir/pki/scheduler.crt" "$dir/pki/scheduler.key"
  cat >"$n/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This host is cgroup v1, which kubelet 1.36 refuses unless told; containerd 1.6 has no
# RuntimeConfig RPC, so the driver comes from here.
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
address: $NODE_IP
port: $kubelet_port
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $kubelet_healthz_port
tlsCertFile: $dir/pki/kubelet.crt
tlsPrivateKeyFile: $dir/pki/kubelet.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $dir/pki/ca.crt}
authorization: {mode: Webhook}
clusterDomain: cluster.local
clusterDNS: [$DNS_IP]
resolvConf: $n/resolv.conf
failSwapOn: false
serializeImagePulls: false
rotateCertificates: false
imageGCHighThresholdPercent: 99
imageGCLowThresholdPercent: 98
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
maxPods: 110
YAML
}

# node_apiserver_args: what the kube-apiserver needs when a node runs beside it.
node_apiserver_args() {
  api_args+=(
    --bind-address 0.0.0.0 --advertise-address "$NODE_IP"
    --enable-admission-plugins NodeRestriction
    --kubelet-preferred-address-types InternalIP
    --kubelet-client-certificate "$dir/pki/apiserver-kubelet-client.crt"
    --kubelet-client-key "$dir/pki/apiserver-kubelet-client.key"
  )
}

node_start() {
  local bin=$1 n=$dir/node
  log "starting containerd (socket $CONTAINERD_SOCK)"
  start containerd containerd --config "$n/containerd.toml"
  wait_for containerd 30 ctr --address "$CONTAINERD_SOCK" version
  local archives
  archives=$("$here/images.sh" node)
  # shellcheck disable=SC2086
  "$here/images.sh" import $archives 2>/dev/null ||
    { log "importing $archives into containerd failed"; return 1; }
  log "starting kube-scheduler, kube-proxy and kubelet (node $NODE_NAME at $NODE_IP)"
  start scheduler "$bin/kube-scheduler" --kubeconfig "$n/scheduler.kubeconfig" \
    --authentication-kubeconfig "$n/scheduler.kubeconfig" --authorization-kubeconfig "$n/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$(free_port)" --leader-elect=false --v=1
  start kube-proxy "$bin/kube-proxy" --kubeconfig "$n/kube-proxy.kubeconfig" --hostname-override "$NODE_NAME" \
    --proxy-mode iptables --cluster-cidr "$POD_CIDR" --conntrack-max-per-core 0 \
    --healthz-bind-address "127.0.0.1:$(free_port)" --metrics-bind-address "127.0.0.1:$(free_port)" --v=1
  start kubelet "$bin/kubelet" --config "$n/kubelet.yaml" --kubeconfig "$n/kubelet.kubeconfig" \
    --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" --root-dir "$n/kubelet" --v=1
  wait_for kubelet 120 node_ready
  log "starting CoreDNS ($DNS_IP)"
  "$bin/kubectl" --kubeconfig "$dir/kubeconfig" apply -f "$here/cluster/coredns.yaml" >/dev/null
  wait_for kubelet 120 "$bin/kubectl" --kubeconfig "$dir/kubeconfig" -n kube-system rollout status deployment/coredns --timeout 5s
}

node_ready() {
  [[ $("$PATROL_BIN/kubectl" --kubeconfig "$dir/kubeconfig" get node "$NODE_NAME" \
    -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) == True ]]
}

# node_down: stops and removes everything of the node, found by the names above rather
# than by the state directory, so it also cleans up after a crash.
node_down() {
  local pid name
  # The kubelet first, so nothing restarts what is stopped next.
  for name in kubelet kube-proxy scheduler; do
    if [[ -f $dir/$name.pid ]]; then
      pid=$(cat "$dir/$name.pid")
      kill -TERM -- "-$pid" 2>/dev/null || true
    fi
  done
  pkill -TERM -f -- "--root-dir [^ ]*/node/kubelet" 2>/dev/null || true
  sleep 0.5
  # Every container process: all of them sit in the kubelet's kubepods cgroups.
  local cg
  for cg in /sys/fs/cgroup/pids/kubepods /sys/fs/cgroup/memory/kubepods /sys/fs/cgroup/cpu/kubepods; do
    [[ -d $cg ]] || continue
    find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
  done
  pkill -KILL -f "containerd-shim-runc-v2 .*-address $CONTAINERD_SOCK" 2>/dev/null || true
  if [[ -f $dir/containerd.pid ]]; then kill -TERM "$(cat "$dir/containerd.pid")" 2>/dev/null || true; fi
  pkill -TERM -f "containerd --config [^ ]*/node/containerd.toml" 2>/dev/null || true
  for _ in $(seq 1 50); do pgrep -f "containerd --config [^ ]*/node/containerd.toml" >/dev/null || break; sleep 0.1; done
  pkill -KILL -f "containerd --config [^ ]*/node/containerd.toml" 2>/dev/null || true
  pkill -KILL -f -- "--root-dir [^ ]*/node/kubelet" 2>/dev/null || true
  # kube-proxy's rules, then the kubelet's and ours.
  if [[ -x ${PATROL_BIN:-}/kube-proxy ]]; then "$PATROL_BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true; fi
  local ipt table rule chain
  for ipt in iptables ip6tables; do
    command -v "$ipt" >/dev/null || continue
    for table in filter nat mangle; do
      while read -r rule; do
        # shellcheck disable=SC2086
        "$ipt" -t "$table" ${rule/#-A/-D} 2>/dev/null || true
      done < <("$ipt" -t "$table" -S 2>/dev/null | grep -E -- '^-A (INPUT|OUTPUT|FORWARD|PREROUTING|POSTROUTING) .*-j (KUBE-|PATROL-)')
      for chain in $("$ipt" -t "$table" -S 2>/dev/null | sed -n 's/^-N \(KUBE-[A-Z0-9-]*\|PATROL-[A-Z0-9-]*\)$/\1/p'); do
        "$ipt" -t "$table" -F "$chain" 2>/dev/null || true
      done
      for chain in $("$ipt" -t "$table" -S 2>/dev/null | sed -n 's/^-N \(KUBE-[A-Z0-9-]*\|PATROL-[A-Z0-9-]*\)$/\1/p'); do
        "$ipt" -t "$table" -X "$chain" 2>/dev/null || true
      done
    done
  done
  # Mounts: pod volumes, sandbox network namespaces, container root filesystems.
  local m
  while read -r m; do umount -l "$m" 2>/dev/null || true; done < <(
    awk '{print $2}' /proc/mounts | grep -E "^($dir/node/|$NODE_RUN/|/run/netns/cni-|/var/run/netns/cni-)" | sort -r)
  local ns
  for ns in /run/netns/cni-*; do [[ -e $ns ]] && { ip netns delete "$(basename "$ns")" 2>/dev/null || rm -f "$ns"; }; done
  # The kubelet's cgroups, deepest first.
  for cg in /sys/fs/cgroup/*/kubepods; do
    [[ -d $cg ]] && find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  ip link del "$POD_BRIDGE" 2>/dev/null || true
  ip link del "$NODE_BRIDGE" 2>/dev/null || true
  if [[ -f $NODE_RUN/sysctl.saved ]]; then
    local ip_forward bridge_nf
    ip_forward=$(sed -n 's/^ip_forward=//p' "$NODE_RUN/sysctl.saved")
    bridge_nf=$(sed -n 's/^bridge_nf=//p' "$NODE_RUN/sysctl.saved")
    [[ -n $ip_forward ]] && echo "$ip_forward" >/proc/sys/net/ipv4/ip_forward
    [[ -n $bridge_nf ]] && echo "$bridge_nf" >/proc/sys/net/bridge/bridge-nf-call-iptables
  fi
  rm -rf "$NODE_RUN"
}

# node_leftovers: what a previous node left that node_down could not remove; empty when clean.
node_leftovers() {
  local left=()
  ip link show "$NODE_BRIDGE" >/dev/null 2>&1 && left+=("link $NODE_BRIDGE")
  ip link show "$POD_BRIDGE" >/dev/null 2>&1 && left+=("link $POD_BRIDGE")
  pgrep -f "containerd --config [^ ]*/node/containerd.toml" >/dev/null && left+=("containerd $(pgrep -f "containerd --config [^ ]*/node/containerd.toml" | head -1)")
  pgrep -f -- "--root-dir [^ ]*/node/kubelet" >/dev/null && left+=("kubelet $(pgrep -f -- "--root-dir [^ ]*/node/kubelet" | head -1)")
  awk '{print $2}' /proc/mounts | grep -qE "^$NODE_RUN/" && left+=("mounts under $NODE_RUN")
  printf '%s\n' "${left[@]}"
}
