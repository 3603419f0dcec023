#!/usr/bin/env bash
# sled's own tests, run on this patched copy (BATON-PATCHES.md): they cover
# what the patches touch.
#
#   test_log              the log: reservations, aborts, flushes, recovery
#   test_tree_failpoints  I/O failures injected at sled's failpoints, then
#                         recovery checked against a model (patches 4 and 7)
#   test_crash_recovery   child processes killed mid-write, then recovered
#                         and checked, batches included (patches 2, 5, 7)
#   test_tree             the tree and batches under concurrency (1, 2, 7)
#
# With the "testing" feature, as upstream runs them (it adds delays that
# make races show). In its own target directory: this package is not a
# member of the repository's workspace.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
export CARGO_TARGET_DIR="${SLED_TARGET_DIR:-$PWD/../../target/sled}"
exec cargo test --locked --features testing \
    --test test_log --test test_tree_failpoints --test test_crash_recovery --test test_tree "$@"
