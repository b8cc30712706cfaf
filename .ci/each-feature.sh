#!/usr/bin/env bash
# Checks that the library builds with no features, with each feature alone, and with all of them
# (what `cargo hack check --each-feature --no-dev-deps` does, without installing it).
set -euo pipefail
cd "$(dirname "$0")/.."
features=$(cargo metadata --no-deps --format-version 1 \
  | python3 -c 'import json,sys; m=json.load(sys.stdin); print(" ".join(sorted(next(p for p in m["packages"] if p["name"] == "tower-webhook")["features"])))')
# Dev-dependencies would unify extra features into the library; check it as users build it.
# A warning fails the check too (code a feature alone leaves unused, say), without a RUSTFLAGS
# that would rebuild every dependency.
check() {
  local out
  out=$(cargo check --lib --no-default-features "$@" -q 2>&1) || { echo "$out"; return 1; }
  if grep -q '^warning' <<<"$out"; then
    echo "$out"
    return 1
  fi
}
check
for feature in $features; do
  echo "-- --features $feature"
  check --features "$feature"
done
