#!/usr/bin/env bash
# The dashboard's browser tests: Debian's Chromium driven by playwright-core
# (no browser download: playwright-core ships none) against the real broker
# and real workers. Screenshots of every page go to $ARTIFACTS (default
# target/browser-artifacts).
#
#   bash tests/browser/run.sh
#
# Needs target/debug/baton and target/debug/examples/dashboard_worker
# (`cargo build -p baton-server --example dashboard_worker` builds both),
# Node 20+ with npm, and /usr/bin/chromium (installed with apt-get when
# missing and this runs as root).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
root="$(cd ../.. && pwd)"
export BATON_BIN="${BATON_BIN:-$root/target/debug/baton}"
export WORKER_BIN="${WORKER_BIN:-$root/target/debug/examples/dashboard_worker}"
export ARTIFACTS="${ARTIFACTS:-$root/target/browser-artifacts}"
export CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
for bin in "$BATON_BIN" "$WORKER_BIN"; do
  [ -x "$bin" ] || { echo "missing $bin: cargo build -p baton-server --example dashboard_worker" >&2; exit 1; }
done
if [ ! -x "$CHROMIUM" ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "no Chromium at $CHROMIUM: apt-get install chromium (as root)" >&2
    exit 1
  fi
fi
npm ci --no-audit --no-fund --silent
mkdir -p "$ARTIFACTS"
node --test --test-concurrency=1 dashboard.test.mjs
