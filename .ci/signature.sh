#!/usr/bin/env bash
# Installs what the signature tests need: redis-server and openssl (Debian; openssl makes the
# example's GitHub App keys), the Python peers
# (standardwebhooks, svix, stripe, slack_sdk; PyJWT with cryptography for the example's GitHub
# App tokens) in a venv and the npm peer
# (@octokit/webhooks-methods, with Node.js and npm from Debian when missing), all under
# .ci/.deps/ (git-ignored). Idempotent and quiet.
set -euo pipefail
cd "$(dirname "$0")/.."
DEPS=.ci/.deps
mkdir -p "$DEPS"
printf "*\n" > "$DEPS/.gitignore"

if ! command -v redis-server >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends redis-server >/dev/null
fi
# The Debian package starts a system instance; the tests start their own on a random port.
if ! command -v openssl >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends openssl >/dev/null
fi

if [ ! -x "$DEPS/venv/bin/python" ]; then
    # Debian ships `venv` (and `ensurepip`) apart from Python itself.
    if ! python3 -m venv "$DEPS/venv" >/dev/null 2>&1; then
        rm -rf "$DEPS/venv"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null
        apt-get install -y -qq --no-install-recommends python3 python3-venv >/dev/null
        python3 -m venv "$DEPS/venv"
    fi
fi
# Installed again whenever the pinned versions change, not only when a module is missing.
if ! cmp -s .ci/interop/requirements.txt "$DEPS/venv/.installed-requirements.txt" \
    || ! "$DEPS/venv/bin/python" -c 'import standardwebhooks, svix, stripe, slack_sdk, jwt, cryptography' >/dev/null 2>&1; then
    "$DEPS/venv/bin/python" -m pip install -q --disable-pip-version-check \
        -r .ci/interop/requirements.txt
    cp .ci/interop/requirements.txt "$DEPS/venv/.installed-requirements.txt"
fi

if [ ! -d "$DEPS/node/node_modules/@octokit/webhooks-methods" ] \
    || ! cmp -s .ci/interop/package-lock.json "$DEPS/node/.installed-package-lock.json"; then
    if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null
        apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
    fi
    # @octokit/webhooks-methods 6 needs Node.js 20 (Debian 12's own is 18).
    node_major=$(node -p 'process.versions.node.split(".")[0]')
    if [ "$node_major" -lt 20 ]; then
        echo "signature: Node.js $(node --version) is too old for @octokit/webhooks-methods 6: install Node.js 20 or later" >&2
        exit 1
    fi
    mkdir -p "$DEPS/node"
    cp .ci/interop/package.json .ci/interop/package-lock.json "$DEPS/node/"
    (cd "$DEPS/node" && npm ci --silent --no-audit --no-fund >/dev/null)
    cp .ci/interop/package-lock.json "$DEPS/node/.installed-package-lock.json"
fi

"$DEPS/venv/bin/python" -c 'import standardwebhooks, svix, stripe, slack_sdk, jwt, cryptography'
test -f "$DEPS/node/node_modules/@octokit/webhooks-methods/dist-node/index.js"
command -v redis-server >/dev/null
echo "signature: interop peers and redis-server ready"
