#!/usr/bin/env bash
# A local 3-node RabbitMQ cluster for the cluster tests, built from the
# installed Debian package (rabbitmq-server) and separate from the single
# broker on 5672, which it never touches:
#
#   up          start the three nodes and cluster them (idempotent); waits
#               until all three run and are clustered, or fails with a message
#   down        stop the three nodes and remove their directory
#   status      say which nodes run and what the cluster looks like
#   stop N...   stop node N (1..3; several at once), keeping its data
#   stop-app N...
#               stop only the rabbit application on node N (rabbitmqctl
#               stop_app; several at once): its listener, connections and
#               quorum queue members go as in a stop, the Erlang VM stays,
#               so that start takes about 3 s instead of about 16 s
#   start N...  start node N again (several at once) and wait until they run;
#               a node stopped by stop-app gets its rabbit application back
#   pid N       print the OS pid of node N's Erlang VM (to SIGSTOP/SIGCONT it)
#   ctl N ARGS  run rabbitmqctl ARGS against node N (with the cluster's cookie)
#   urls        print the three amqp URLs, comma-separated
#   nodes       print the three node names, comma-separated
#
# Nodes: mlp1@localhost .. mlp3@localhost, AMQP on 127.0.0.1:5681..5683,
# Erlang distribution on 25681..25683, no plugins. Every file (data, logs,
# config, pid files, the Erlang cookie, a HOME holding it for rabbitmqctl)
# lives under one directory, RABBITMQ_CLUSTER_DIR (default
# $TMPDIR/mlproducer-cluster). A directory left by a killed run is repaired:
# nodes that are down are started again, and when no node runs at all the
# directory is wiped and the cluster built anew.
#
# On a machine without RabbitMQ it installs Debian's rabbitmq-server first
# (needs root or sudo). The nodes run as the calling user.
#
# Environment: RABBITMQ_CLUSTER_DIR, RABBITMQ_CLUSTER_TIMEOUT (seconds a
# step may take, default 120).
set -euo pipefail

export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
base="${RABBITMQ_CLUSTER_DIR:-${TMPDIR:-/tmp}/mlproducer-cluster}"
timeout_s="${RABBITMQ_CLUSTER_TIMEOUT:-120}"
lock_file="${base%/}.lock"
bindir=/usr/lib/rabbitmq/bin
amqp_base=5680
dist_base=25680
nodes=(1 2 3)

say() { echo "rabbitmq-cluster: $*" >&2; }
die() { echo "rabbitmq-cluster: error: $*" >&2; exit 1; }

node_name() { echo "mlp$1@localhost"; }
node_dir() { echo "$base/node$1"; }
amqp_port() { echo $((amqp_base + $1)); }

check_node() {
  [[ "${1:-}" =~ ^[123]$ ]] || die "give a node number 1, 2 or 3 (got '${1:-}')"
}

as_root() {
  if [[ $(id -u) -eq 0 ]]; then
    "$@" 9>&-
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@" 9>&-
  else
    die "need root to run '$*' (not root and no sudo); install rabbitmq-server by hand"
  fi
}

ensure_installed() {
  [[ -x "$bindir/rabbitmq-server" ]] && return 0
  say "rabbitmq-server is not installed: installing Debian's package"
  as_root apt-get update -q || say "warning: apt-get update failed; trying the install anyway"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
    -o DPkg::Lock::Timeout=300 rabbitmq-server ||
    say "warning: apt-get install reported an error"
  [[ -x "$bindir/rabbitmq-server" ]] || die "rabbitmq-server is still not installed after apt-get install rabbitmq-server"
}

# node_env N CMD...: runs CMD with the environment of node N. Every path the
# node would otherwise take from /etc/rabbitmq or /var/lib/rabbitmq is set.
node_env() {
  local n=$1; shift
  local d; d=$(node_dir "$n")
  env HOME="$base/home" \
    RABBITMQ_CONF_ENV_FILE="$base/rabbitmq-env.conf" \
    RABBITMQ_NODENAME="$(node_name "$n")" \
    RABBITMQ_USE_LONGNAME=false \
    RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
    RABBITMQ_NODE_PORT="$(amqp_port "$n")" \
    RABBITMQ_DIST_PORT=$((dist_base + n)) \
    RABBITMQ_CONFIG_FILE="$d/rabbitmq.conf" \
    RABBITMQ_ADVANCED_CONFIG_FILE="$d/advanced.config" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$d/enabled_plugins" \
    RABBITMQ_PLUGINS_EXPAND_DIR="$d/plugins-expand" \
    RABBITMQ_MNESIA_BASE="$d/mnesia" \
    RABBITMQ_MNESIA_DIR="$d/mnesia/$(node_name "$n")" \
    RABBITMQ_LOG_BASE="$d/log" \
    RABBITMQ_PID_FILE="$d/pid" \
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
    ERL_EPMD_ADDRESS=127.0.0.1 \
    "$@" 9>&-
}

# ctl N ARGS...: rabbitmqctl against node N, bounded by 60 s.
ctl() {
  local n=$1; shift
  node_env "$n" timeout 60 "$bindir/rabbitmqctl" -n "$(node_name "$n")" "$@"
}

# running N: the node answers and its rabbit app runs.
running() {
  local out
  out=$(node_env "$1" timeout 15 "$bindir/rabbitmqctl" -n "$(node_name "$1")" -q eval 'rabbit:is_running().' 2>/dev/null) || return 1
  [[ "$out" == true ]]
}

# amqp_up N: node N answers the AMQP 0-9-1 protocol header with a frame (its
# listener starts last in the boot, once the node has rejoined the cluster).
# Much cheaper than a rabbitmqctl call, which boots an Erlang VM.
amqp_up() {
  local first
  first=$(timeout 3 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0" && printf "AMQP\x00\x00\x09\x01" >&3 && head -c 1 <&3 | od -An -tx1' "$(amqp_port "$1")" 2>/dev/null) || return 1
  [[ "${first// /}" == 01 ]]
}

# pinging N: the Erlang node answers (rabbit may be stopped or booting).
pinging() {
  node_env "$1" timeout 15 "$bindir/rabbitmqctl" -n "$(node_name "$1")" -q ping >/dev/null 2>&1
}

beam_pid() {
  local f; f="$(node_dir "$1")/pid"
  [[ -s "$f" ]] || return 1
  local p; p=$(tr -dc 0-9 <"$f")
  [[ -n "$p" ]] && kill -0 "$p" 2>/dev/null || return 1
  echo "$p"
}

# members N: the running members of the cluster as node N sees them, one a line.
members() {
  ctl "$1" -q eval 'lists:foreach(fun(N) -> io:format("~s~n", [N]) end, rabbit_nodes:all_running()), ok.' 2>/dev/null |
    grep '@' || true
}

# clustered: node 1 sees all three nodes' rabbit running. A node counts as
# running in a peer's view only once it has joined and booted, so one view
# is enough, and each rabbitmqctl call costs about 2 s of an Erlang VM's boot.
clustered() {
  local m
  m=$(members 1 | sort | tr '\n' ' ')
  [[ "$m" == "mlp1@localhost mlp2@localhost mlp3@localhost " ]]
}

write_files() {
  mkdir -p "$base/home"
  if [[ ! -s "$base/home/.erlang.cookie" ]]; then
    # A cookie of its own: nothing else on the machine can talk to these nodes.
    head -c 30 /dev/urandom | od -An -tx1 | tr -dc 0-9a-f | tr a-f A-F >"$base/home/.erlang.cookie"
    chmod 400 "$base/home/.erlang.cookie"
  fi
  : >"$base/rabbitmq-env.conf"
  local n d
  for n in "${nodes[@]}"; do
    d=$(node_dir "$n")
    mkdir -p "$d/log" "$d/mnesia"
    cat >"$d/rabbitmq.conf" <<EOF
listeners.tcp.1 = 127.0.0.1:$(amqp_port "$n")
loopback_users.guest = true
log.file.level = info
log.console = false
EOF
    echo '[].' >"$d/enabled_plugins"
  done
}

# app_stopped N: the file that says stop-app stopped node N's rabbit
# application (written before the stop_app, removed once it runs again).
app_stopped() { echo "$(node_dir "$1")/app-stopped"; }

# start_node N: starts node N detached unless it already runs (does not wait).
# A node whose rabbit application stop-app stopped gets it back with
# start_app, in the background: wait_running sees it come up, and the
# command's final wait reaps it.
start_node() {
  local n=$1
  local d; d=$(node_dir "$n")
  if [[ -f "$(app_stopped "$n")" ]]; then
    if beam_pid "$n" >/dev/null; then
      (ctl "$n" start_app >>"$d/log/startup.log" 2>&1 && rm -f "$(app_stopped "$n")") &
      return 0
    fi
    rm -f "$(app_stopped "$n")" # the VM is gone too: start it below
  fi
  if beam_pid "$n" >/dev/null || pinging "$n"; then
    return 0
  fi
  rm -f "$d/pid"
  (cd "$d" && node_env "$n" "$bindir/rabbitmq-server" -detached >>"$d/log/startup.log" 2>&1) ||
    die "could not start $(node_name "$n"): see $d/log/startup.log"
}

# wait_running N...: waits until every node given runs, at most timeout_s.
wait_running() {
  local start=$SECONDS n
  for n in "$@"; do
    until amqp_up "$n"; do
      if (( SECONDS - start >= timeout_s )); then
        local log; log=$(ls -t "$(node_dir "$n")"/log/*.log 2>/dev/null | head -n 1 || true)
        [[ -n "$log" ]] && { echo "--- last lines of $log:" >&2; tail -n 25 "$log" >&2; }
        die "$(node_name "$n") did not start within ${timeout_s}s (see $(node_dir "$n")/log)"
      fi
      sleep 1
    done
  done
}

# stop_node N: stops node N (the Erlang VM). SIGTERM makes the VM shut
# rabbit down cleanly (init:stop), as rabbitmqctl stop does, without the cost
# of a rabbitmqctl call; SIGKILL after timeout_s.
stop_node() {
  local n=$1 p=""
  p=$(beam_pid "$n") || p=""
  if [[ -z "$p" ]]; then
    # No pid file (a half-started node): ask the node itself.
    if pinging "$n"; then ctl "$n" stop >/dev/null 2>&1 || true; fi
    ! pinging "$n" || die "$(node_name "$n") still answers after rabbitmqctl stop"
    return 0
  fi
  kill -CONT "$p" 2>/dev/null || true # a paused node cannot stop
  kill -TERM "$p" 2>/dev/null || true
  local start=$SECONDS
  while kill -0 "$p" 2>/dev/null; do
    if (( SECONDS - start >= timeout_s )); then
      say "$(node_name "$n") (pid $p) still runs ${timeout_s}s after SIGTERM: SIGKILL"
      kill -KILL "$p" 2>/dev/null || true
      sleep 1
      break
    fi
    sleep 0.1
  done
  rm -f "$(node_dir "$n")/pid" "$(app_stopped "$n")"
}

# stop_app N: stops node N's rabbit application, leaving its Erlang VM.
stop_app() {
  local n=$1 out
  beam_pid "$n" >/dev/null || die "$(node_name "$n") does not run: nothing to stop-app"
  touch "$(app_stopped "$n")"
  out=$(ctl "$n" stop_app 2>&1) || die "rabbitmqctl stop_app on $(node_name "$n") failed: $out"
}

wipe() {
  local n
  for n in "${nodes[@]}"; do stop_node "$n" & done
  wait
  rm -rf "$base"
}

cmd_up() {
  ensure_installed
  if [[ -d "$base" ]] && clustered 2>/dev/null; then
    say "cluster up: $(cmd_urls)"
    return 0
  fi
  local start=$SECONDS any=false n
  if [[ -d "$base" ]]; then
    for n in "${nodes[@]}"; do pinging "$n" && any=true; done
    if [[ $any == false || ! -s "$base/home/.erlang.cookie" || ! -f "$base/joined" ]]; then
      say "stale cluster directory $base (no node runs, or the last up did not finish): building anew"
      wipe
    fi
  fi
  if [[ ! -d "$base" ]]; then
    write_files
    for n in "${nodes[@]}"; do start_node "$n"; done
    wait_running "${nodes[@]}"
    local out step
    for n in 2 3; do
      for step in stop_app "join_cluster $(node_name 1)" start_app; do
        # shellcheck disable=SC2086 # step is a command and its argument
        out=$(ctl "$n" $step 2>&1) || die "rabbitmqctl $step on $(node_name "$n") failed: $out"
      done
    done
    touch "$base/joined"
  else
    # Some nodes run: start the others, which rejoin with their data.
    for n in "${nodes[@]}"; do start_node "$n"; done
  fi
  wait_running "${nodes[@]}"
  until clustered; do
    (( SECONDS - start < timeout_s )) || { cmd_status >&2 || true; die "the nodes run but are not clustered after ${timeout_s}s; try: $0 down && $0 up"; }
    sleep 1
  done
  wait # start_app calls start_node left in the background
  say "cluster up after $((SECONDS - start))s: $(cmd_urls)"
}

cmd_status() {
  local n rc=0
  [[ -d "$base" ]] || { echo "no cluster (no $base)"; return 3; }
  for n in "${nodes[@]}"; do
    if running "$n"; then
      echo "$(node_name "$n") running amqp=127.0.0.1:$(amqp_port "$n") pid=$(beam_pid "$n" || echo ?) members=$(members "$n" | tr '\n' ' ')"
    elif pinging "$n"; then
      echo "$(node_name "$n") up, rabbit app not running"; rc=3
    else
      echo "$(node_name "$n") stopped"; rc=3
    fi
  done
  return $rc
}

cmd_urls() {
  local n out=()
  for n in "${nodes[@]}"; do out+=("amqp://guest:guest@127.0.0.1:$(amqp_port "$n")/"); done
  (IFS=,; echo "${out[*]}")
}

cmd=${1:-}
case "$cmd" in
  urls) cmd_urls; exit 0 ;;
  nodes) echo "mlp1@localhost,mlp2@localhost,mlp3@localhost"; exit 0 ;;
  pid) check_node "${2:-}"; beam_pid "$2" || die "$(node_name "$2") does not run"; exit 0 ;;
  ctl) check_node "${2:-}"; n=$2; shift 2; ctl "$n" "$@"; exit $? ;;
  status) cmd_status; exit $? ;;
esac

# The commands below change the cluster: one at a time.
mkdir -p "$(dirname "$lock_file")"
exec 9>>"$lock_file"
flock -w $((timeout_s * 3)) 9 || die "timed out waiting for the lock $lock_file (another rabbitmq-cluster.sh run?)"

case "$cmd" in
  up) cmd_up ;;
  down) wipe; say "cluster down, $base removed" ;;
  stop|stop-app|start)
    shift
    (( $# > 0 )) || die "give the nodes to $cmd: 1, 2 or 3"
    for n in "$@"; do check_node "$n"; done
    [[ -d "$base" ]] || die "no cluster at $base; run: $0 up"
    pids=()
    case "$cmd" in
      stop) for n in "$@"; do stop_node "$n" & pids+=($!); done ;;
      stop-app) for n in "$@"; do stop_app "$n" & pids+=($!); done ;;
      start)
        # Together: a node that was not the last to stop waits for its peers.
        for n in "$@"; do start_node "$n"; done
        wait_running "$@" ;;
    esac
    for p in "${pids[@]}"; do wait "$p" || die "$cmd $*: a node failed (see above)"; done
    wait # start_app calls started in the background
    done_word=stopped; [[ $cmd == start ]] && done_word=running
    for n in "$@"; do say "$(node_name "$n") $done_word"; done ;;
  *) echo "usage: $0 up|down|status|stop N...|stop-app N...|start N...|pid N|ctl N ARGS...|urls|nodes" >&2; exit 2 ;;
esac
