#!/usr/bin/env bash
# The conformance suite's one command: builds what is missing, then runs
# tests/conformance/run.py (arguments go to it, e.g. --sdk rust,go,
# --scenario noop, --write-docs).
#
#   tests/conformance/run.sh [--write-docs] [run.py arguments...]
#
# Prerequisites, each built here when missing (in CI the SDK steps before it
# have built them all, so this only checks):
#   broker        $BATON_BIN, else target/debug/baton (cargo build -p baton-server)
#   rust worker   target/debug/examples/conformance_worker (cargo build --example conformance_worker)
#   python        the SDK installed in $BATON_VENV, else worker-sdk/python/.venv
#                 (pip install ./worker-sdk/python); the runner itself runs there
#   typescript    worker-sdk/typescript/dist and node_modules (npm ci && npm run build; Node 20+)
#   go            worker-sdk/go/pb (tools/gen-proto.sh; Go 1.26+); run.py builds the worker
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"
export BATON_BIN="${BATON_BIN:-$repo/target/debug/baton}"
venv="${BATON_VENV:-$repo/worker-sdk/python/.venv}"

if [ ! -x "$BATON_BIN" ]; then
    cargo build -p baton-server --bin baton
fi
cargo build --quiet --example conformance_worker
if ! "$venv/bin/python" -c 'import baton.pb' 2>/dev/null; then
    "${PYTHON:-python3}" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "./worker-sdk/python[test]"
fi
if [ ! -f worker-sdk/typescript/dist/cjs/cli.js ] || [ ! -d worker-sdk/typescript/node_modules ]; then
    (cd worker-sdk/typescript && npm ci --no-audit --no-fund && npm run --silent build)
fi
if [ ! -d worker-sdk/go/pb ]; then
    (cd worker-sdk/go && bash tools/gen-proto.sh)
fi
# The runner's own judging first (no broker, a second).
(cd tests/conformance && "$venv/bin/python" -m pytest -q -p no:cacheprovider test_run.py)
exec "$venv/bin/python" tests/conformance/run.py "$@"
