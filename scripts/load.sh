#!/usr/bin/env bash
# Load test on loopback: server pinned to core 0, load generator to core 1 (taskset).
#   scripts/load.sh [SECONDS] [CONNECTIONS]      (defaults: 30 s, 64 connections)
# 1. `layers` (axum + WebhookErrorLayer + SignatureLayer) vs `bare` (axum handler that checks
#    the same HMAC itself), same run, same mix of deliveries: requests per second of each.
# 2. The full pr_agent_server: mixed valid / invalid / duplicate deliveries; checks that no
#    unverified delivery was processed and no valid one lost; RSS before and after.
set -euo pipefail
cd "$(dirname "$0")/.."
# A failed run leaves no server or sampler behind, whichever step it failed at.
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
secs=${1:-30}
conns=${2:-64}
export GITHUB_WEBHOOK_SECRET=load-test-secret
command -v taskset >/dev/null || { apt-get update -qq && apt-get install -y -qq util-linux >/dev/null; }

cargo build --release --all-features --example load_test --example pr_agent_server -q
bin="${CARGO_TARGET_DIR:-target}/release/examples"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rss() { awk '/VmRSS/ {print $2 " kB"}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
wait_port() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

# Alternate the two servers, twice each, so both see the same machine conditions.
declare -A total=([layers]=0 [bare]=0)
for round in 1 2; do
  for mode in layers bare; do
    p=$(port)
    taskset -c 0 "$bin/load_test" serve "$mode" "127.0.0.1:$p" >/dev/null & server=$!
    wait_port "$p"
    t0=$(cpu_ticks "$server")
    out=$(taskset -c 1 "$bin/load_test" generate "http://127.0.0.1:$p/hook" "$secs" "$conns") \
      || { echo "round $round, $mode: FAILED   $out"; exit 1; }
    busy=$(( ($(cpu_ticks "$server") - t0) * 100 / $(getconf CLK_TCK) / secs ))
    kill "$server"; wait "$server" 2>/dev/null || true
    rps=$(python3 -c 'import json,sys; print(round(json.loads(sys.argv[1])["requests_per_second"]))' "$out")
    echo "round $round, $mode: $rps req/s, server core busy ${busy}%   $out"
    total[$mode]=$(( ${total[$mode]} + rps ))
  done
done
python3 -c 'import sys; l,b=map(float,sys.argv[1:]); print(f"mean req/s: layers {l/2:.0f}, bare {b/2:.0f}, layers/bare = {l/b:.3f}")' "${total[layers]}" "${total[bare]}"

p=$(port)
RUST_LOG=warn PORT=$p taskset -c 0 "$bin/pr_agent_server" >/dev/null & server=$!
wait_port "$p"
before=$(rss "$server")
# RSS every tenth of the run: it grows while the replay store fills up to its bound, then stays.
samples=$(mktemp)
( for i in $(seq 1 10); do sleep "$(python3 -c "print($secs / 10)")"; printf '%s ' "$(rss "$server" | tr -d ' ')"; done ) > "$samples" 2>/dev/null &
sampler=$!
out=$(taskset -c 1 "$bin/load_test" generate "http://127.0.0.1:$p/api/v1/github_webhooks" "$secs" "$conns" --status "http://127.0.0.1:$p/status") \
  || { echo "pr_agent_server: FAILED   $out"; exit 1; }
wait "$sampler" 2>/dev/null || true
after=$(rss "$server")
echo "pr_agent_server: RSS during the run: $(cat "$samples")"; rm -f "$samples"
kill "$server"; wait "$server" 2>/dev/null || true
echo "pr_agent_server: RSS before $before, after $after"
echo "pr_agent_server: $out"
python3 -c 'import json,sys; r=json.loads(sys.argv[1]); sys.exit(0 if r["ok"] else 1)' "$out"
