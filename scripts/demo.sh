#!/usr/bin/env bash
# The demo behind `make demo` (which runs scripts/ensure-rabbitmq.sh first):
# builds examples/gateway and examples/worker, runs both against the local
# RabbitMQ (RABBITMQ_URL, default amqp://guest:guest@127.0.0.1:5672/), sends
# the gateway one task of each type and one invalid request with curl, shows
# what the worker received, the gateway's status and ml_producer_ metrics,
# then stops both with SIGTERM and checks that they exit 0.
#
# The gateway listens on 127.0.0.1:3001 (the guide's port), or the next free
# port up to 3020; set DEMO_PORT to start elsewhere. Its status and metrics
# are on the admin listener (ADMIN_ADDR): 127.0.0.1:9090 or the next free
# port up to 9109. Everything it starts is
# stopped, and its temporary files removed, however the script ends.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

GO="${GO:-go}"
say() { printf '\n== %s\n' "$*"; }
die() { echo "demo: error: $*" >&2; exit 1; }

command -v curl >/dev/null 2>&1 || die "curl is needed (apt-get install curl)"
command -v "$GO" >/dev/null 2>&1 || die "go is not on PATH"

work=$(mktemp -d "${TMPDIR:-/tmp}/mlproducer-demo.XXXXXX")
gw_pid=""
wk_pid=""

# stop PID NAME: SIGTERM, then wait up to 30 s, then SIGKILL. Prints nothing
# and returns the process's exit code.
stop() {
  local pid=$1 i
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 300; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "demo: pid $pid did not stop within 30 s of SIGTERM: killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  local code=0
  wait "$pid" 2>/dev/null || code=$?
  return "$code"
}

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  [[ -n "$gw_pid" ]] && { stop "$gw_pid" || true; }
  [[ -n "$wk_pid" ]] && { stop "$wk_pid" || true; }
  if ((status != 0)); then
    for f in gateway.log worker.log worker.out; do
      [[ -s "$work/$f" ]] || continue
      echo "--- last lines of $f:" >&2
      tail -n 15 "$work/$f" >&2
    done
    echo "demo: FAILED" >&2
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "building examples/gateway and examples/worker"
"$GO" build -o "$work/gateway" ./examples/gateway
"$GO" build -o "$work/worker" ./examples/worker

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
port="${DEMO_PORT:-3001}"
last=$((port + 19))
until port_free "$port"; do
  port=$((port + 1))
  ((port <= last)) || die "no free port from ${DEMO_PORT:-3001} to $last"
done
base="http://127.0.0.1:$port"
admin_port=9090
until port_free "$admin_port"; do
  admin_port=$((admin_port + 1))
  ((admin_port <= 9109)) || die "no free port from 9090 to 9109"
done
admin="http://127.0.0.1:$admin_port"

say "starting the worker and the gateway (HTTP_ADDR=127.0.0.1:$port ADMIN_ADDR=127.0.0.1:$admin_port)"
"$work/worker" >"$work/worker.out" 2>"$work/worker.log" &
wk_pid=$!
HTTP_ADDR="127.0.0.1:$port" ADMIN_ADDR="127.0.0.1:$admin_port" "$work/gateway" >/dev/null 2>"$work/gateway.log" &
gw_pid=$!

# wait_for WHAT SECONDS COMMAND...: polls COMMAND every 0.1 s, checking that
# both programs still run.
wait_for() {
  local what=$1 secs=$2 i
  shift 2
  for ((i = 0; i < secs * 10; i++)); do
    "$@" && return 0
    kill -0 "$gw_pid" 2>/dev/null || die "the gateway exited while waiting for $what"
    kill -0 "$wk_pid" 2>/dev/null || die "the worker exited while waiting for $what"
    sleep 0.1
  done
  die "timed out after ${secs}s waiting for $what"
}
wait_for "GET /readyz to answer 200" 30 curl -fs -o /dev/null "$base/readyz"
wait_for "the worker to consume" 30 grep -q "worker: consuming" "$work/worker.log"
echo "ready: $(curl -sS "$base/readyz")"

# post PATH BODY WANT: prints the request and the answer; checks the status.
ids=()
post() {
  local path=$1 body=$2 want=$3 out code
  out=$(curl -sS -X POST -H 'Content-Type: application/json' --data-binary "$body" \
    -w '\n%{http_code}' "$base$path")
  code=${out##*$'\n'}
  out=${out%$'\n'*}
  out=${out%$'\n'}
  printf 'POST %s %s\n  -> %s %s\n' "$path" "$body" "$code" "$out"
  [[ "$code" == "$want" ]] || die "POST $path answered $code, want $want"
  if [[ "$code" == 202 ]]; then
    ids+=("$(sed -n 's/.*"messageId":"\([^"]*\)".*/\1/p' <<<"$out")")
  fi
}

say "publishing through the gateway"
post /api/ml/summarize '{"shareId":"share-42","content":"RabbitMQ is a message broker: it accepts and forwards messages.","options":{"maxLength":120,"language":"en"}}' 202
post /api/ml/transcribe '{"shareId":"share-42","mediaUrl":"https://example.com/media/talk.mp3","options":{"language":"en","diarization":true}}' 202
post /api/ml/embed '{"shareId":"share-42","content":"Vector embeddings place similar texts close together.","options":{"dimensions":768}}' 202
post /api/ml/summarize '{"shareId":"share-42","content":"Too short a summary?","options":{"maxLength":-5}}' 400

say "what the worker received (one line per task; it also takes tasks left by earlier runs)"
all_arrived() {
  local id
  for id in "${ids[@]}"; do grep -qF "id=$id" "$work/worker.out" || return 1; done
}
wait_for "the worker to receive ${#ids[@]} tasks" 15 all_arrived
for id in "${ids[@]}"; do grep -F "id=$id" "$work/worker.out"; done

say "GET /api/ml/status"
curl -fsS "$admin/api/ml/status"

say "GET /api/ml/metrics/prometheus | grep ^ml_producer_ (zero counters and histogram buckets left out)"
curl -fsS "$admin/api/ml/metrics/prometheus" | grep '^ml_producer_' | grep -v '_bucket{' | grep -Ev '_total\{[^}]*\} 0$'

say "stopping both with SIGTERM"
code=0
stop "$gw_pid" || code=$?
gw_pid=""
echo "gateway exited with $code"
grep -E 'shutting down|producer closed|mlproducer: closed|gateway stopped' "$work/gateway.log" | sed 's/^/  /' || true
((code == 0)) || die "the gateway exited with $code"
stop "$wk_pid" || code=$?
wk_pid=""
echo "worker exited with $code"
grep -E 'worker stopped' "$work/worker.log" | sed 's/^/  /' || true
((code == 0)) || die "the worker exited with $code"

say "demo OK"
