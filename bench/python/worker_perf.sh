#!/usr/bin/env bash
# perf stat of one Python worker over N no-op .delay() tasks: its CPU, context
# switches and futex/write/sendmsg calls per task (docs/benchmarks.md, "Worker
# CPU per no-op task").
#
#   PYTHON=<venv>/bin/python BATON_BIN=target/release/baton bash bench/python/worker_perf.sh [N] [worker args...]
#
# Starts its own broker on a free 127.0.0.1 port (temporary data directory)
# and one `python -m baton worker -c 2` (plus the worker args given), warms
# them up with 300 tasks, then counts while N tasks run; stops exactly what it
# started, by PID. Needs perf with the syscalls tracepoints (root, or
# kernel.perf_event_paranoid <= 1).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python3}"
broker="${BATON_BIN:-$here/../../target/release/baton}"
n="${1:-30000}"
shift || true
tmp="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT
port="$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$broker" serve --listen "127.0.0.1:$port" --data "$tmp/data" >"$tmp/broker.log" 2>&1 &
pids+=($!)
export BATON_ADDR="127.0.0.1:$port" PYTHONPATH="$here" BENCH_RECORDS="$tmp/records.bin"
: >"$BENCH_RECORDS"
"$python" -m baton worker --app baton_tasks:app -c 2 --loglevel WARNING "$@" >"$tmp/worker.log" 2>&1 &
worker=$!
pids+=("$worker")
submit() {
    "$python" - "$1" "$2" <<'PY'
import os, sys, time
import baton_tasks, records
n, total = int(sys.argv[1]), int(sys.argv[2])
start = time.time()
for i in range(n):
    baton_tasks.noop.delay(i)
baton_tasks.app.flush()
while records.count(os.environ[records.RECORDS_ENV]) < total:
    time.sleep(0.01)
print(f"{n / (time.time() - start):.0f} tasks/s")
PY
}
submit 300 300 >/dev/null
perf stat -e task-clock,context-switches,syscalls:sys_enter_futex,syscalls:sys_enter_write,syscalls:sys_enter_sendmsg \
    -p "$worker" -o "$tmp/perf.txt" &
perf=$!
sleep 0.3
submit "$n" "$((n + 300))"
kill -INT "$perf"
wait "$perf" || true
awk -v n="$n" '/task-clock/ {gsub(",", "", $1); printf "worker CPU: %.1f us per task\n", $1 * 1000 / n}
    /context-switches|syscalls/ {gsub(",", "", $1); printf "%s: %.2f per task\n", $2, $1 / n}' "$tmp/perf.txt"
