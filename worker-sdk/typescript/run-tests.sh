#!/usr/bin/env bash
# Everything the TypeScript SDK needs checked, from a fresh machine with
# Node 20+ and npm: install the locked dependencies, build (generating the
# types from ../../proto), type-check sources and tests, lint and format
# check, then run the tests (unit, protocol coverage, and the rest against
# the real broker).
#
#   worker-sdk/typescript/run-tests.sh [test files...]
#
# The broker is $BATON_BIN, else target/debug/baton of this repository
# (cargo build -p baton-server). Without it the broker tests are skipped,
# unless $CI or $BATON_REQUIRE_BROKER is set, which makes them fail.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
bin="${BATON_BIN:-$repo/target/debug/baton}"
case "$bin" in /*) ;; *) bin="$PWD/$bin" ;; esac
export BATON_BIN="$bin"
cd "$here"

step() { printf '\n--> %s\n' "$*"; }

step "npm ci"
npm ci --no-audit --no-fund

step "build (types generated from proto/, tsc, ESM entry point)"
npm run --silent build

step "type check (tsc --noEmit, strict: sources, tests, the conformance worker and client)"
npx tsc -p tsconfig.test.json --noEmit
npx tsc -p ../../tests/conformance/typescript --noEmit

step "lint and format check (biome)"
npx biome check . ../../tests/conformance/typescript/*.ts

step "tests (broker: $BATON_BIN)"
rm -rf build
npx tsc -p tsconfig.test.json
if [ "$#" -gt 0 ]; then
  node --test --test-concurrency=1 "$@"
else
  node --test --test-concurrency=1 build/test/*.test.js
fi
