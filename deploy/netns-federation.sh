#!/usr/bin/env bash
# netns-federation.sh: a multi-host lgsp federation on one machine, each
# "host" a Linux network namespace with its own address.
#
#   netns-federation.sh up     --dir DIR [--lgsp PATH] [--prefix P]
#   netns-federation.sh status --dir DIR [--prefix P]
#   netns-federation.sh down   --dir DIR [--prefix P]
#
# `up` makes these namespaces, joined by a bridge that lives in a namespace of
# its own (P-lan), so the machine's own network is never touched and nothing
# outside 10.77.0.0/24 is routed:
#
#   P-adm  10.77.0.5    the provincial IT desk (admin certificate, lgsp CLI)
#   P-r1   10.77.0.11   registry server 1 (client :7101, peer :7201)
#   P-r2   10.77.0.12   registry server 2
#   P-r3   10.77.0.13   registry server 3
#   P-a    10.77.0.21   node of agency 000.00.12.H62 (Sở Tư pháp), serving
#                       the dataset 000.00.12.H62/ho-tich on :7301
#   P-b    10.77.0.22   node of agency 000.00.13.H62 (UBND huyện Tam Dương),
#                       granted access to it
#
# It makes a CA in DIR/ca, issues every certificate with its host's address
# (--ip), starts the servers and nodes with `ip netns exec`, registers the
# agencies, publishes the dataset and grants it, and returns once agency B's
# node answers a call to it. Each host's files and log are in DIR/<host>.
#
# `down` stops every process in those namespaces (SIGTERM, then SIGKILL after
# 10 s) and deletes the namespaces, which removes every link in them. It can
# be run any number of times. DIR is kept, with the logs.
#
# Needs root and iproute2 (`ip netns`). P defaults to "lgsp".
set -Eeuo pipefail
# Name the command that failed, once (the trap runs again in each caller).
# shellcheck disable=SC2154 # failed_rc is assigned inside the trap
trap 'failed_rc=$?; [ -n "${FAILED:-}" ] || { FAILED=1; echo "netns-federation: failed (exit $failed_rc): $BASH_COMMAND" >&2; }' ERR

readonly SUBNET=10.77.0
readonly TRUST_DOMAIN=vinhphuc.gov.vn
readonly PROVINCE=000.00.00.H62
readonly AGENCY_A=000.00.12.H62
readonly AGENCY_B=000.00.13.H62
# host name, address
readonly HOSTS="adm:$SUBNET.5 r1:$SUBNET.11 r2:$SUBNET.12 r3:$SUBNET.13 a:$SUBNET.21 b:$SUBNET.22"
readonly REGISTRY="$SUBNET.11:7101,$SUBNET.12:7101,$SUBNET.13:7101"
# One-shot commands say only what went wrong; servers log more (start_in).
export RUST_LOG=warn NO_COLOR=1

die() {
  echo "netns-federation: $*" >&2
  exit 1
}

usage() {
  sed -n '5,7p' "$0" | sed 's/^# *//' >&2
  exit 2
}

[ $# -ge 1 ] || usage
COMMAND=$1
shift
DIR=""
LGSP=""
PREFIX=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) DIR=${2:?--dir needs a directory}; shift 2 ;;
    --lgsp) LGSP=${2:?--lgsp needs a path}; shift 2 ;;
    --prefix) PREFIX=${2:?--prefix needs a name}; shift 2 ;;
    -h | --help) usage ;;
    *) echo "netns-federation: unknown argument $1" >&2; usage ;;
  esac
done
[ -n "$DIR" ] || die "--dir DIR is required (certificates, data and logs go there)"
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
STATE="$DIR/federation.env"

# `down` and `status` find the prefix `up` used in DIR.
if [ -z "$PREFIX" ] && [ -f "$STATE" ]; then
  PREFIX=$(sed -n 's/^PREFIX=//p' "$STATE")
fi
PREFIX=${PREFIX:-lgsp}
case "$PREFIX" in
  *[!a-zA-Z0-9_-]* | "") die "--prefix may hold letters, digits, - and _ only" ;;
esac

ns() { echo "$PREFIX-$1"; }
host_ip() {
  local h
  for h in $HOSTS; do
    [ "${h%%:*}" = "$1" ] && { echo "${h#*:}"; return; }
  done
  die "no host $1"
}
# Every namespace this script makes, the bridge's last (deleting it removes
# the other ends of every veth pair).
all_namespaces() {
  local h
  for h in $HOSTS; do ns "${h%%:*}"; done
  ns lan
}
ns_exists() { ip netns list 2>/dev/null | awk '{print $1}' | grep -qx "$1"; }

need_root() {
  [ "$(id -u)" = 0 ] || die "needs root (network namespaces)"
  command -v ip >/dev/null || die "needs iproute2 (the ip command)"
  ip netns list >/dev/null 2>&1 || die "ip netns does not work here"
}

# Runs lgsp in host $1's namespace.
lgsp_in() {
  local host=$1
  shift
  ip netns exec "$(ns "$host")" "$LGSP" "$@"
}

# Starts lgsp in host $1's namespace in the background, logging to
# DIR/$1/$1.log and recording its pid.
start_in() {
  local host=$1
  shift
  ip netns exec "$(ns "$host")" env RUST_LOG=info "$LGSP" "$@" \
    </dev/null >>"$DIR/$host/$host.log" 2>&1 &
  echo $! >"$DIR/$host/pid"
}

# retry SECONDS WHAT COMMAND...: runs COMMAND until it succeeds, for at most
# SECONDS; on failure prints its last output.
retry() {
  local seconds=$1 what=$2
  shift 2
  local deadline=$((SECONDS + seconds)) out
  while :; do
    if out=$("$@" 2>&1); then
      return 0
    fi
    if [ $SECONDS -ge $deadline ]; then
      echo "$out" >&2
      die "$what did not happen within ${seconds}s (logs in $DIR/*/*.log)"
    fi
    sleep 0.3
  done
}

make_network() {
  local lan h host ip
  lan=$(ns lan)
  ip netns add "$lan"
  ip -n "$lan" link set lo up
  ip -n "$lan" link add br0 type bridge
  ip -n "$lan" link set br0 up
  for h in $HOSTS; do
    host=${h%%:*}
    ip=${h#*:}
    ip netns add "$(ns "$host")"
    ip -n "$(ns "$host")" link set lo up
    # One veth pair per host: v-<host> on the bridge, eth0 in the host.
    ip -n "$lan" link add name "v-$host" type veth peer name eth0 netns "$(ns "$host")"
    ip -n "$lan" link set dev "v-$host" master br0 up
    ip -n "$(ns "$host")" addr add "$ip/24" dev eth0
    ip -n "$(ns "$host")" link set eth0 up
  done
}

make_pki() {
  local i
  "$LGSP" ca init --ca "$DIR/ca" --trust-domain "$TRUST_DOMAIN" \
    --name "CA tỉnh Vĩnh Phúc (netns)" >/dev/null
  for i in 1 2 3; do
    "$LGSP" ca issue --ca "$DIR/ca" --role registry --agency "$PROVINCE" --name "registry-$i" \
      --ip "$(host_ip "r$i")" --dns localhost --out "$DIR/r$i/tls" >/dev/null
  done
  "$LGSP" ca issue --ca "$DIR/ca" --role admin --agency "$PROVINCE" --name so-tttt \
    --ip "$(host_ip adm)" --out "$DIR/adm/tls" >/dev/null
}

start_registry() {
  local i ip
  for i in 1 2 3; do
    ip=$(host_ip "r$i")
    cat >"$DIR/r$i/registry.toml" <<EOF
# Registry server $i of the netns federation (see deploy/registry.toml).
id = $i
listen = "$ip:7101"
peer_listen = "$ip:7201"
data_dir = "$DIR/r$i/data"

[tls]
cert = "$DIR/r$i/tls/cert.pem"
key = "$DIR/r$i/tls/key.pem"
ca = "$DIR/r$i/tls/ca.pem"

[[peers]]
id = 1
peer = "$(host_ip r1):7201"
client = "$(host_ip r1):7101"

[[peers]]
id = 2
peer = "$(host_ip r2):7201"
client = "$(host_ip r2):7101"

[[peers]]
id = 3
peer = "$(host_ip r3):7201"
client = "$(host_ip r3):7101"
EOF
    start_in "r$i" registry start --config "$DIR/r$i/registry.toml"
  done
  retry 30 "a registry leader every server agrees on" leader_agreed
}

# Every server answers and names the same leader.
leader_agreed() {
  local out
  out=$(lgsp_in adm registry status --registry "$REGISTRY" --tls-dir "$DIR/adm/tls") || return 1
  [ "$(echo "$out" | grep -oE ', leader [0-9]+$' | sort -u | grep -cv 'leader 0')" = 1 ] &&
    [ "$(echo "$out" | grep -cE ', leader [0-9]+$')" = 3 ]
}

# prepare_node HOST AGENCY NAME: the CSR flow, as an agency's IT team runs it.
prepare_node() {
  local host=$1 agency=$2 name=$3 ip
  ip=$(host_ip "$host")
  # The trust domain comes from the CA's certificate, copied to tls/ca.pem.
  "$LGSP" node init --agency "$agency" --name "$name" --dir "$DIR/$host" \
    --ca "$DIR/ca/ca.crt" --registry "$REGISTRY" \
    --provider-listen "$ip:7301" --consumer-listen 127.0.0.1:7401 \
    --ip "$ip" --dns localhost >/dev/null
  # The CA signs only host names its policy allows the agency.
  "$LGSP" ca policy allow --ca "$DIR/ca" --agency "$agency" --dns-suffix localhost \
    --ip "$ip" >/dev/null
  "$LGSP" ca sign --ca "$DIR/ca" --csr "$DIR/$host/tls/csr.pem" \
    --out "$DIR/$host/tls/cert.pem" >/dev/null
  grep -q '^# metrics_listen = ' "$DIR/$host/node.toml" ||
    die "the node.toml that lgsp node init wrote has no metrics_listen line to set"
  sed -i "s|^# metrics_listen = .*|metrics_listen = \"$ip:9301\"|" "$DIR/$host/node.toml"
}

start_nodes() {
  lgsp_in adm agency register --registry "$REGISTRY" --tls-dir "$DIR/adm/tls" \
    --code "$AGENCY_A" --name "Sở Tư pháp tỉnh Vĩnh Phúc" >/dev/null
  lgsp_in adm agency register --registry "$REGISTRY" --tls-dir "$DIR/adm/tls" \
    --code "$AGENCY_B" --name "UBND huyện Tam Dương" >/dev/null

  prepare_node a "$AGENCY_A" node-a
  prepare_node b "$AGENCY_B" node-b
  cat >>"$DIR/a/node.toml" <<'EOF'

[[services]]
name = "ho-tich"
kind = "dataset"
description = "Hộ tịch"
EOF
  cat >"$DIR/a/ho-tich.csv" <<'EOF'
so_dinh_danh,ho_ten,ngay_sinh,noi_sinh
001099012345,Nguyễn Thị Hương,1999-03-12,Vĩnh Yên
001088054321,Trần Văn Đức,1988-11-02,Phúc Yên
001077000111,Lê Thị Ánh,1977-07-07,Vĩnh Yên
EOF
  "$LGSP" dataset import --data-dir "$DIR/a/data" --service ho-tich \
    --file "$DIR/a/ho-tich.csv" --key so_dinh_danh >/dev/null

  start_in a node start --config "$DIR/a/node.toml"
  start_in b node start --config "$DIR/b/node.toml"
  retry 30 "node-a registering itself" grep -q "node registered in the catalog" "$DIR/a/a.log"
  retry 30 "node-b registering itself" grep -q "node registered in the catalog" "$DIR/b/b.log"

  # The provider agency publishes with its own node certificate; the
  # provincial IT desk grants directly (agencies use `lgsp requests`).
  lgsp_in a service publish --registry "$REGISTRY" --tls-dir "$DIR/a/tls" \
    "$AGENCY_A/ho-tich" --kind dataset --node node-a --description "Hộ tịch" >/dev/null
  lgsp_in adm access grant --registry "$REGISTRY" --tls-dir "$DIR/adm/tls" \
    --service "$AGENCY_A/ho-tich" --consumer "$AGENCY_B" --reason "Công văn số 123/UBND" >/dev/null
  retry 30 "a call from agency B's namespace to A's dataset" \
    lgsp_in b call "$AGENCY_A/ho-tich" --param key=001099012345 --node 127.0.0.1:7401 --timeout 5
}

up() {
  need_root
  [ -n "$LGSP" ] || LGSP=$(command -v lgsp) || die "no lgsp on PATH; give --lgsp PATH"
  [ -x "$LGSP" ] || die "$LGSP is not an executable"
  LGSP=$(cd "$(dirname "$LGSP")" && pwd)/$(basename "$LGSP")
  local n
  for n in $(all_namespaces); do
    ns_exists "$n" && die "namespace $n exists already: run '$0 down --prefix $PREFIX --dir DIR' with the DIR it was made with first"
  done
  [ -z "$(ls -A "$DIR")" ] || die "$DIR is not empty: give an empty or new directory"
  printf 'PREFIX=%s\nLGSP=%s\n' "$PREFIX" "$LGSP" >"$STATE"
  local h
  for h in $HOSTS; do mkdir -p "$DIR/${h%%:*}"; done

  # Whatever fails from here on, leave nothing running.
  trap 'echo "netns-federation: up failed; cleaning up (logs kept in $DIR)" >&2; down >/dev/null' EXIT
  make_network
  make_pki
  start_registry
  start_nodes
  trap - EXIT

  cat <<EOF
lgsp federation up in network namespaces ($PREFIX-*), files and logs in $DIR:
  $(ns adm)  $(host_ip adm)   admin certificate in $DIR/adm/tls
  $(ns r1)   $(host_ip r1)  registry server 1 (client :7101, peer :7201)
  $(ns r2)   $(host_ip r2)  registry server 2
  $(ns r3)   $(host_ip r3)  registry server 3
  $(ns a)    $(host_ip a)  node-a of $AGENCY_A, serving $AGENCY_A/ho-tich on :7301, metrics :9301
  $(ns b)    $(host_ip b)  node-b of $AGENCY_B, granted $AGENCY_A/ho-tich
Try:
  ip netns exec $(ns adm) $LGSP registry status --registry $REGISTRY --tls-dir $DIR/adm/tls
  ip netns exec $(ns b) $LGSP call $AGENCY_A/ho-tich --param key=001099012345 --node 127.0.0.1:7401
  $0 down --dir $DIR
EOF
}

# Processes running in namespace $1.
ns_pids() { ip netns pids "$1" 2>/dev/null || true; }

down() {
  need_root
  local n pid deadline removed=0
  local -a pids
  # SIGTERM first: servers and nodes shut down cleanly and log it.
  for n in $(all_namespaces); do
    ns_exists "$n" || continue
    mapfile -t pids < <(ns_pids "$n")
    [ ${#pids[@]} -eq 0 ] || kill -TERM "${pids[@]}" 2>/dev/null || true
  done
  deadline=$((SECONDS + 10))
  for n in $(all_namespaces); do
    ns_exists "$n" || continue
    while [ -n "$(ns_pids "$n")" ] && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
    mapfile -t pids < <(ns_pids "$n")
    [ ${#pids[@]} -eq 0 ] || kill -KILL "${pids[@]}" 2>/dev/null || true
  done
  # A process whose namespace was deleted by hand keeps running: the pid files
  # name it. Only an lgsp process is stopped, so a reused pid is left alone.
  for pid in $(cat "$DIR"/*/pid 2>/dev/null || true); do
    if grep -qa lgsp "/proc/$pid/cmdline" 2>/dev/null; then
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  rm -f "$DIR"/*/pid
  for n in $(all_namespaces); do
    ns_exists "$n" || continue
    deadline=$((SECONDS + 5))
    until ip netns del "$n" 2>/dev/null || ! ns_exists "$n"; do
      [ $SECONDS -lt $deadline ] || die "cannot delete namespace $n"
      sleep 0.2
    done
    removed=$((removed + 1))
  done
  echo "lgsp federation $PREFIX down: $removed namespace(s) removed"
}

status() {
  need_root
  local h host n pid running=0
  for h in $HOSTS; do
    host=${h%%:*}
    n=$(ns "$host")
    if ! ns_exists "$n"; then
      echo "$n: absent"
      continue
    fi
    pid=$(cat "$DIR/$host/pid" 2>/dev/null || true)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      echo "$n ${h#*:}: lgsp running (pid $pid)"
      running=$((running + 1))
    else
      echo "$n ${h#*:}: up"
    fi
  done
  ns_exists "$(ns lan)" && echo "$(ns lan): bridge" || echo "$(ns lan): absent"
  if [ "$running" -gt 0 ] && ns_exists "$(ns adm)"; then
    LGSP=$(sed -n 's/^LGSP=//p' "$STATE" 2>/dev/null || true)
    if [ -n "$LGSP" ]; then
      lgsp_in adm registry status --registry "$REGISTRY" --tls-dir "$DIR/adm/tls" || true
    fi
  fi
}

case "$COMMAND" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) usage ;;
esac
