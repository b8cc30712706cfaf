#!/usr/bin/env bash
# Scripted runs of every example: each one is started as a user would start it and driven on
# 127.0.0.1; the script fails if an example does not answer as documented.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v curl >/dev/null || { apt-get update -qq && apt-get install -y -qq curl >/dev/null; }

cargo build --all-features --examples -q
bin="${CARGO_TARGET_DIR:-target}/debug/examples"
log=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() { # file pattern
  for _ in $(seq 1 100); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "timed out waiting for '$2' in $1:"; cat "$1"; return 1
}
expect_status() { # expected, curl args...
  local want=$1; shift
  local got; got=$(curl -s -o "$log/body" -w '%{http_code}' --max-time 10 "$@")
  if [ "$got" != "$want" ]; then echo "expected HTTP $want, got $got: $(cat "$log/body")"; return 1; fi
}

echo "-- reqwest_client"
timeout 60 "$bin/reqwest_client"

echo "-- tonic_server + tonic_client"
port=$(free_port)
ADDR=127.0.0.1:$port "$bin/tonic_server" >"$log/tonic" 2>&1 & pids+=($!)
wait_for "$log/tonic" "listening"
ADDR=127.0.0.1:$port timeout 60 "$bin/tonic_client"

echo "-- hyper_server"
port=$(free_port)
ADDR=127.0.0.1:$port GITHUB_WEBHOOK_SECRET=ci-secret "$bin/hyper_server" >"$log/hyper" 2>&1 & pids+=($!)
wait_for "$log/hyper" "try: curl"
cmd=$(grep -o "curl .*" "$log/hyper")
eval "expect_status 202 -s ${cmd#curl }"
eval "expect_status 401 -s ${cmd#curl } -H 'X-Hub-Signature-256: sha256=00'"

echo "-- pr_agent_server (development mode, the README's first command)"
port=$(free_port)
env -u GITHUB_WEBHOOK_SECRET PORT=$port "$bin/pr_agent_server" >"$log/pr" 2>&1 & pids+=($!)
wait_for "$log/pr" "expect 401"
good=$(grep -A1 "expect 202" "$log/pr" | tail -1 | sed 's/^ *//')
bad=$(grep -A1 "expect 401" "$log/pr" | tail -1 | sed 's/^ *//')
expect_status 200 "http://127.0.0.1:$port/"
eval "expect_status 202 ${good#curl -i }"
eval "expect_status 200 ${good#curl -i }"   # the same delivery again: a duplicate, acknowledged
eval "expect_status 401 ${bad#curl -i }"
grep -q '"type":"urn:tower-webhook:problem:invalid-signature"' "$log/body"
curl -s "http://127.0.0.1:$port/status" | python3 -c '
import json,sys
s=json.load(sys.stdin)["deliveries"]
assert s == {"accepted": 1, "duplicates": 1, "rejected": 1}, s'
sleep 0.5
grep -q "no API configured: comment not posted" "$log/pr" || { cat "$log/pr"; exit 1; }

echo "examples: all scripted runs passed"
