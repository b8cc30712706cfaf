#!/usr/bin/env bash
# Scripted runs of every example: each one is started as a user would start it and driven on
# 127.0.0.1; the script fails if an example does not answer as documented.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v curl >/dev/null || { apt-get update -qq && apt-get install -y -qq curl >/dev/null; }

cargo build --all-features --examples -q
bin="${CARGO_TARGET_DIR:-target}/debug/examples"
# The examples read their settings from the environment: what the machine running this has set
# (a CI system's GITHUB_API_URL or GITHUB_TOKEN, a RUST_LOG that hides the lines looked for, a
# proxy that curl would send loopback requests through) must not change what they do.
for var in $(compgen -e); do
  case "$var" in
    GITHUB_*|GITLAB_*|BITBUCKET_*|GITEA_*|AZURE_DEVOPS_*|TUNNEL_*|NGROK_*|CIRCUIT_BREAKER_*|\
    COMMENT_*|COMMENTS_*|MAX_*|REQUEST_TIMEOUT_SECS|SHUTDOWN_GRACE_SECS|SSL_CERT_FILE|HOST|PORT|\
    ADDR|RUST_LOG|NO_COLOR|http_proxy|https_proxy|all_proxy|HTTP_PROXY|HTTPS_PROXY|ALL_PROXY)
      unset "$var" ;;
  esac
done
log=$(mktemp -d)
pids=()
cleanup() {
  local rc=$?
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  # On a failure, what each example printed: the servers' logs say why a client saw what it saw.
  if [ "$rc" != 0 ]; then
    # Its log lines (a panic's backtrace would fill the tail), then the tail.
    for f in "$log"/*; do
      [ -s "$f" ] || continue
      echo "--- ${f##*/}: log lines"; grep -E ' (ERROR|WARN|INFO) |listening|panicked' "$f" | tail -n 40 || true
      echo "--- ${f##*/}: last 20 lines"; tail -n 20 "$f"
    done
  fi
  return "$rc"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() { # file pattern
  for _ in $(seq 1 100); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "timed out waiting for '$2' in $1:"; cat "$1"; return 1
}
wait_lines() { # file pattern count: until the file has that many lines matching
  local n
  for _ in $(seq 1 100); do
    n=$(grep -c "$2" "$1" 2>/dev/null) || true
    [ "${n:-0}" -ge "$3" ] && return 0; sleep 0.1
  done
  echo "timed out waiting for $3 lines '$2' in $1:"; cat "$1"; return 1
}
stops_cleanly() { # pid name [seconds]: SIGTERM, then the process must exit 0 within 10 s (or seconds)
  local limit=${3:-10}
  kill -TERM "$1"
  for _ in $(seq 1 $((limit * 10))); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$1" 2>/dev/null; then echo "$2 still runs $limit s after SIGTERM"; kill -KILL "$1"; return 1; fi
  local rc=0; wait "$1" || rc=$?
  if [ "$rc" != 0 ]; then echo "$2 did not stop cleanly on SIGTERM (exit $rc)"; return 1; fi
}
expect_status() { # expected, curl args...
  local want=$1; shift
  rm -f "$log/body"
  local got; got=$(curl -s -o "$log/body" -w '%{http_code}' --max-time 10 "$@") || true
  if [ "$got" != "$want" ]; then echo "expected HTTP $want, got $got: $(cat "$log/body" 2>/dev/null)"; return 1; fi
}

echo "-- reqwest_client"
timeout 60 "$bin/reqwest_client"

echo "-- tonic_server + tonic_client"
port=$(free_port)
ADDR=127.0.0.1:$port "$bin/tonic_server" >"$log/tonic" 2>&1 & server=$!; pids+=($server)
wait_for "$log/tonic" "listening"
ADDR=127.0.0.1:$port timeout 90 "$bin/tonic_client"
# The INTERNAL answer came from a panic the error layer caught, and logged with its message.
grep -q 'handler panicked.*the echo handler panicked' "$log/tonic" || { echo "the caught panic was not logged"; exit 1; }
stops_cleanly "$server" tonic_server
! grep -q $'\x1b' "$log/tonic" || { cat -v "$log/tonic"; exit 1; }   # plain text in a file

echo "-- hyper_server"
port=$(free_port)
# Without GITHUB_WEBHOOK_SECRET: a random secret for the run, printed with a signed command.
env -u GITHUB_WEBHOOK_SECRET ADDR=127.0.0.1:$port "$bin/hyper_server" >"$log/hyper" 2>&1 & server=$!; pids+=($server)
wait_for "$log/hyper" "try: curl"
cmd=$(grep -o "curl .*" "$log/hyper")
secret=$(sed -n 's/^  GITHUB_WEBHOOK_SECRET=//p' "$log/hyper")
eval "expect_status 202 -s ${cmd#curl }"
grep -qx "accepted pull_request delivery 1 (action opened)" "$log/body"
eval "expect_status 409 -s ${cmd#curl }"   # the same delivery again: a replay
# A wrong signature (the only one sent) on a fresh delivery.
bad=$(sed -e 's/sha256=[0-9a-f]*/sha256=0000/' -e 's/Delivery: 1/Delivery: 2/' <<<"$cmd")
eval "expect_status 401 -s ${bad#curl }"
grep -q '"type":"urn:tower-webhook:problem:invalid-signature"' "$log/body"
wait_for "$log/hyper" "no signature matches any configured secret"
# Signed but not JSON (a form-encoded delivery): the sender's fault, 400, not a server error.
form='payload=%7B%7D'
sig=$(python3 -c 'import hmac,sys; print(hmac.new(sys.argv[2].encode(), sys.argv[1].encode(), "sha256").hexdigest())' "$form" "$secret")
expect_status 400 "http://127.0.0.1:$port/" -H 'X-GitHub-Event: push' -H 'X-GitHub-Delivery: 4' \
  -H "X-Hub-Signature-256: sha256=$sig" --data "$form"
# SIGTERM while a delivery is still being uploaded: it is answered, then the server exits 0.
sig=$(grep -o 'sha256=[0-9a-f]*' <<<"$cmd")
{ sleep 3; printf '%s' '{"action":"opened","number":1}'; } |
  curl -s -o "$log/slow" -w '%{http_code}' --max-time 10 -X POST -T - -H 'Expect:' \
    -H 'X-GitHub-Event: pull_request' -H 'X-GitHub-Delivery: 3' -H "X-Hub-Signature-256: $sig" \
    "http://127.0.0.1:$port/" >"$log/slow_status" & upload=$!
sleep 1.5   # its head sent and read (on a busy machine too), its body still to come
stops_cleanly "$server" hyper_server
wait "$upload" || true
! grep -q $'\x1b' "$log/hyper" || { cat -v "$log/hyper"; exit 1; }
[ "$(cat "$log/slow_status")" = 202 ] || { echo "in-flight delivery got $(cat "$log/slow_status"): $(cat "$log/slow")"; exit 1; }
# With the hook's secret set, nothing signed with it is printed.
port=$(free_port)
ADDR=127.0.0.1:$port GITHUB_WEBHOOK_SECRET=ci-secret "$bin/hyper_server" >"$log/hyper-set" 2>&1 & server=$!; pids+=($server)
wait_for "$log/hyper-set" "deliveries signed with GITHUB_WEBHOOK_SECRET"
! grep -q "sha256=\|ci-secret" "$log/hyper-set" || { cat "$log/hyper-set"; exit 1; }
stops_cleanly "$server" hyper_server

echo "-- load_test (layers server, 1 s of load)"
port=$(free_port)
"$bin/load_test" serve layers "127.0.0.1:$port" >"$log/load" 2>&1 & server=$!; pids+=($server)
wait_for "$log/load" "serving layers"
timeout 60 "$bin/load_test" generate "http://127.0.0.1:$port/hook" 1 2 >"$log/report"
python3 -c '
import json,sys
r=json.load(open(sys.argv[1]))
a=r["answers"]
assert r["ok"] and r["requests"] > 0 and a["other"] == 0, r
assert a["202"] == r["sent"]["valid"] + r["sent"]["duplicate"] and a["401"] == r["sent"]["invalid"], r' "$log/report"
kill "$server"

echo "-- pr_agent_server (development mode, the README's first command)"
port=$(free_port)
env -u GITHUB_WEBHOOK_SECRET PORT=$port "$bin/pr_agent_server" >"$log/pr" 2>&1 & pids+=($!)
wait_lines "$log/pr" '^  curl -i ' 2   # both commands printed, the second one too
good=$(grep -A1 "expect 202" "$log/pr" | tail -1 | sed 's/^ *//')
bad=$(grep -A1 "expect 401" "$log/pr" | tail -1 | sed 's/^ *//')
expect_status 200 "http://127.0.0.1:$port/"
eval "expect_status 202 ${good#curl -i }"
eval "expect_status 200 ${good#curl -i }"   # the same delivery again: a duplicate, acknowledged
eval "expect_status 401 ${bad#curl -i }"
grep -q '"type":"urn:tower-webhook:problem:invalid-signature"' "$log/body"
curl -s --max-time 10 "http://127.0.0.1:$port/status" | python3 -c '
import json,sys
s=json.load(sys.stdin)["deliveries"]
assert s == {"accepted": 1, "duplicates": 1, "rejected": 1}, s'
wait_for "$log/pr" "no API configured: comment not posted"
# Written to a file, the log lines are plain text: no colour codes between a field and its value.
! grep -q $'\x1b' "$log/pr" || { cat -v "$log/pr"; exit 1; }

echo "-- pr_agent_server with its stdout closed (piped into a reader gone, as into head)"
port=$(free_port)
env -u GITHUB_WEBHOOK_SECRET PORT=$port "$bin/pr_agent_server" > >(true) 2>"$log/pr_closed" & server=$!; pids+=($server)
for _ in $(seq 1 100); do curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$port/" && break; sleep 0.1; done
kill -0 "$server" 2>/dev/null || { echo "pr_agent_server died with its stdout closed:"; cat "$log/pr_closed"; exit 1; }
expect_status 200 "http://127.0.0.1:$port/"
stops_cleanly "$server" "pr_agent_server (stdout closed)"
! grep -q "panicked" "$log/pr_closed" || { cat "$log/pr_closed"; exit 1; }
# Its log lines went to stderr once stdout refused them.
! grep -q "Unable to write" "$log/pr_closed" || { cat "$log/pr_closed"; exit 1; }
grep -q "draining open connections" "$log/pr_closed" || { cat "$log/pr_closed"; exit 1; }

echo "-- tonic_server: a connection that sends nothing does not hold up its shutdown"
port=$(free_port)
ADDR=127.0.0.1:$port "$bin/tonic_server" >"$log/tonic2" 2>&1 & server=$!; pids+=($server)
wait_for "$log/tonic2" "listening"
exec {silent}<>"/dev/tcp/127.0.0.1/$port"   # connected, and sends nothing
sleep 0.5
# Well before the server's own 10 s limits (its preface timeout, its grace) would end it.
stops_cleanly "$server" "tonic_server (a silent connection open)" 3
exec {silent}>&-

echo "-- pr_agent_server: a second stop signal ends the wait for pending comments"
port=$(free_port)
api=$(free_port)   # nothing listens there: the comment keeps failing and stays pending
env -u GITHUB_WEBHOOK_SECRET PORT=$port GITHUB_API_URL=http://127.0.0.1:$api \
  SHUTDOWN_GRACE_SECS=600 "$bin/pr_agent_server" >"$log/pr2" 2>&1 & server=$!; pids+=($server)
wait_lines "$log/pr2" '^  curl -i ' 2   # both commands printed, the second one too
good=$(grep -A1 "expect 202" "$log/pr2" | tail -1 | sed 's/^ *//')
eval "expect_status 202 ${good#curl -i }"
kill -TERM "$server"
wait_for "$log/pr2" "draining open connections"
sleep 1
kill -0 "$server" 2>/dev/null || { echo "pr_agent_server did not wait for its pending comment:"; cat "$log/pr2"; exit 1; }
stops_cleanly "$server" "pr_agent_server (second SIGTERM)"
grep -q "second stop signal" "$log/pr2" || { cat "$log/pr2"; exit 1; }
# Waiting out its backoff, or on its way through the retries when the process exits.
grep -Eq "comment not posted: the server stopped first|comment not confirmed: the server stopped while its request was on its way" "$log/pr2" || { cat "$log/pr2"; exit 1; }

echo "examples: all scripted runs passed"
