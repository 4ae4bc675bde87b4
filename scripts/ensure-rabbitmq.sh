#!/usr/bin/env bash
# Makes sure a RabbitMQ broker accepts AMQP on the local machine, for the
# integration tests and the demo:
#   1. if something already speaks AMQP on 127.0.0.1:5672, keep it;
#   2. else install Debian's rabbitmq-server if it is missing (needs root or sudo);
#   3. start it (rabbitmq-server -detached, or the service) and wait up to
#      RABBITMQ_START_TIMEOUT seconds (default 90) until it answers.
# Then, unless an integration test is running right now, it clears a memory
# alarm left behind by an aborted test (a watermark below 0.01).
#
# When RABBITMQ_URL names another host, the script only checks that it answers.
# Idempotent; safe to run several times at once. Exits non-zero with a message
# when no broker can be had.
set -euo pipefail

export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
timeout_s="${RABBITMQ_START_TIMEOUT:-90}"
lock_dir="${TMPDIR:-/tmp}"
# Held by integration tests (internal/rabbittest) while they run.
test_lock="$lock_dir/mlproducer-rabbittest.lock"
# Serialises the install and start below between concurrent runs.
start_lock="$lock_dir/mlproducer-ensure-rabbitmq.start.lock"

say() { echo "ensure-rabbitmq: $*"; }
die() { echo "ensure-rabbitmq: error: $*" >&2; exit 1; }

# The broker to check: the first entry of RABBITMQ_URL, default 127.0.0.1:5672.
hostport="127.0.0.1:5672"
if [[ -n "${RABBITMQ_URL:-}" ]]; then
  u="${RABBITMQ_URL%%,*}"
  scheme="${u%%://*}"
  u="${u#*://}"; u="${u%%/*}"; u="${u##*@}"
  port=5672
  [[ "$scheme" == amqps ]] && port=5671
  if [[ "$u" =~ ^\[(.*)\](:([0-9]+))?$ ]]; then      # [ipv6]:port
    host="${BASH_REMATCH[1]}"; port="${BASH_REMATCH[3]:-$port}"
  elif [[ "$u" == *:* ]]; then
    host="${u%%:*}"; port="${u##*:}"
  else
    host="$u"
  fi
  hostport="$host:$port"
fi
host="${hostport%:*}"; port="${hostport##*:}"

# amqp_up: true when the peer answers the AMQP 0-9-1 protocol header with a
# frame (a connection.start method frame begins with byte 0x01). For amqps
# only the TCP connection is checked.
amqp_up() {
  if [[ "${RABBITMQ_URL:-}" == amqps://* ]]; then
    timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$host" "$port" 2>/dev/null
    return
  fi
  local first
  first=$(timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1" && printf "AMQP\x00\x00\x09\x01" >&3 && head -c 1 <&3 | od -An -tx1' "$host" "$port" 2>/dev/null) || return 1
  [[ "${first// /}" == 01 ]]
}

# Every command runs with the lock descriptors (8, 9) closed: a daemon it
# starts (the broker, epmd) would otherwise keep a lock held for its lifetime.
as_root() {
  if [[ $(id -u) -eq 0 ]]; then
    "$@" 8>&- 9>&-
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@" 8>&- 9>&-
  else
    die "need root to run '$*' (not root and no sudo); install and start RabbitMQ by hand, or run as root"
  fi
}

ctl() { timeout 30 rabbitmqctl "$@" 8>&- 9>&-; }

# Clears a memory alarm that an aborted test left behind (WithMemoryAlarm sets
# the watermark to 1e-7 and restores it when the test ends). Skipped while an
# integration test holds the test lock: the alarm may be on purpose.
repair_alarm() {
  command -v rabbitmqctl >/dev/null 2>&1 || return 0
  exec 8>>"$test_lock" 2>/dev/null || return 0
  if ! flock -n -x 8; then
    say "the test lock is held (integration tests running?): not checking for a stale memory alarm"
    exec 8>&-
    return 0
  fi
  local alarms wm
  alarms=$(ctl -q eval 'rabbit_alarm:get_alarms().' 2>/dev/null) || alarms=""
  if [[ "$alarms" == *"resource_limit,memory"* ]]; then
    wm=$(ctl -q eval 'vm_memory_monitor:get_vm_memory_high_watermark().' 2>/dev/null) || wm=""
    if [[ "$wm" =~ ^[0-9.eE+-]+$ ]] && awk -v w="$wm" 'BEGIN { exit !(w + 0 < 0.01) }'; then
      say "memory alarm with watermark $wm (left by an aborted test): resetting it to 0.4"
      ctl set_vm_memory_high_watermark 0.4 >/dev/null
    else
      say "warning: the broker has a memory alarm (watermark $wm); publishes will block"
    fi
  fi
  flock -u 8
  exec 8>&-
}

if amqp_up; then
  say "RabbitMQ answers on $hostport"
  case "$host" in 127.0.0.1|localhost|::1) repair_alarm ;; esac
  exit 0
fi
case "$host" in
  127.0.0.1|localhost|::1) ;;
  *) die "no AMQP answer from $hostport (RABBITMQ_URL); this script starts local brokers only" ;;
esac

# Only one run installs or starts at a time; the others wait here, then find
# the broker up.
exec 9>>"$start_lock"
flock -w $((timeout_s * 4)) 9 || die "timed out waiting for the lock $start_lock (held by another ensure-rabbitmq run, or by a process that inherited it)"
if amqp_up; then
  say "RabbitMQ answers on $hostport (started by a concurrent run)"
  repair_alarm
  exit 0
fi

if ! command -v rabbitmq-server >/dev/null 2>&1; then
  say "rabbitmq-server is not installed: installing Debian's package"
  as_root apt-get update -q || say "warning: apt-get update failed; trying the install anyway"
  # A failure of the package's own attempt to start the service is not fatal:
  # the broker is started below.
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
    -o DPkg::Lock::Timeout=300 rabbitmq-server ||
    say "warning: apt-get install reported an error"
  command -v rabbitmq-server >/dev/null 2>&1 || die "rabbitmq-server is still not installed after apt-get install rabbitmq-server"
  say "installed rabbitmq-server"
fi

start=$SECONDS
if ! amqp_up; then
  if ctl -q ping >/dev/null 2>&1; then
    # The Erlang node runs but does not listen: it is still booting, or its
    # app was stopped (rabbitmqctl stop_app).
    state=$(ctl -q eval 'rabbit_boot_state:get().' 2>/dev/null) || state=""
    if [[ "$state" == stopped ]]; then
      say "the RabbitMQ node runs with its app stopped: rabbitmqctl start_app"
      ctl start_app >/dev/null 2>&1 || true
    else
      say "the RabbitMQ node is running (state: ${state:-unknown})"
    fi
  else
    say "starting RabbitMQ: rabbitmq-server -detached"
    if ! as_root rabbitmq-server -detached; then
      say "rabbitmq-server -detached failed: trying 'service rabbitmq-server start'"
      as_root service rabbitmq-server start || true
    fi
  fi
fi

say "waiting up to ${timeout_s}s for AMQP on $hostport"
until amqp_up; do
  if (( SECONDS - start >= timeout_s )); then
    log=$(ls -t /var/log/rabbitmq/*.log 2>/dev/null | head -n 1 || true)
    [[ -n "$log" ]] && { echo "--- last lines of $log:" >&2; tail -n 20 "$log" >&2; }
    die "RabbitMQ did not answer on $hostport within ${timeout_s}s"
  fi
  sleep 1
done
say "RabbitMQ is up on $hostport after $((SECONDS - start))s"
repair_alarm
