"""No-op throughput of one Python worker process: how many runs per second it turns over.

    python worker-sdk/python/tools/bench_worker.py --broker target/release/baton \\
        --tasks 20000 --concurrency 8 --runs 3

Each run starts a fresh broker (its own port and data directory) and one
``python -m baton worker --app bench_app:app --concurrency N`` process, then
submits the tasks with ``submit_many`` and times from the first submission
until every task has ended. The task body writes one byte to a file opened
``O_APPEND`` and the harness polls the file's size, so counting ends costs
the worker nothing beyond that write. Prints each run and the median, with
the worker process's CPU time per task (user + system, from ``/proc``): the
figure to compare on a machine busy with other work, where wall time is noisy.

``--profile FILE`` samples the worker with ``py-spy record`` (py-spy must be
on PATH) during the last run: a flame graph, or collapsed stacks (py-spy's
``raw`` format) when FILE ends in ``.txt``. ``--sdk DIR`` makes the worker
import the ``baton`` package under DIR instead of this source tree's, to
compare two versions (say, a ``git worktree`` of an older commit).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Callable

import grpc

SOURCE = Path(__file__).resolve().parent.parent
"""The SDK source tree this script belongs to (its stubs generated: tools/generate_protos.py)."""
sys.path.insert(0, str(SOURCE))

import baton  # noqa: E402 - from SOURCE, not an installed copy
from baton import pb  # noqa: E402

APP = textwrap.dedent(
    """
    import os

    from baton import Baton

    app = Baton()
    _ends = os.open(os.environ["BATON_BENCH_ENDS"], os.O_WRONLY | os.O_APPEND)


    @app.task(name="bench.noop")
    def noop():
        os.write(_ends, b"x")
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.01)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_run(args: argparse.Namespace, work: Path, profile: str | None) -> tuple[float, float]:
    """(wall seconds, worker CPU seconds) from the first submission to the last end."""
    address = f"127.0.0.1:{free_port()}"
    ends = work / "ends"
    ends.write_bytes(b"")
    (work / "bench_app.py").write_text(APP)
    root = args.sdk or str(SOURCE)
    env = dict(os.environ, BATON_BENCH_ENDS=str(ends), PYTHONPATH=os.pathsep.join([str(work), root]))
    broker = subprocess.Popen(
        [args.broker, "serve", "--listen", address, "--data", str(work / "data")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    worker_cmd = [sys.executable, "-m", "baton", "worker", "--app", "bench_app:app", "--broker", address,
                  "--concurrency", str(args.concurrency), "--prefetch", str(args.prefetch), "--name", "bench", "--loglevel", args.loglevel]
    with open(work / "worker.log", "wb") as log:
        worker = subprocess.Popen(worker_cmd, env=env, cwd=work, stdout=subprocess.DEVNULL, stderr=log)
    spy = None
    if profile:
        fmt = "raw" if profile.endswith(".txt") else "flamegraph"
        spy = subprocess.Popen(["py-spy", "record", "--pid", str(worker.pid), "--nonblocking", "--threads",
                                "--format", fmt, "-o", profile], stdout=subprocess.DEVNULL)
    app = baton.Baton(address)
    try:
        admin = pb.AdminStub(app.channel)

        def registered() -> bool:
            try:
                workers = admin.ListWorkers(pb.ListWorkersRequest(), timeout=1).workers
            except grpc.RpcError:
                return False
            return any(w.worker_name == "bench" for w in workers)

        wait_for(registered, 30, "the worker to register")
        noop = app.signature("bench.noop", immutable=True)
        items = [noop] * args.tasks
        cpu = cpu_seconds(worker.pid)
        started = time.perf_counter()
        app.submit_many(items)
        wait_for(lambda: ends.stat().st_size >= args.tasks, 600, f"{args.tasks} ends")
        return time.perf_counter() - started, cpu_seconds(worker.pid) - cpu
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its profile on SIGINT
            spy.wait(30)
        app.close()
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(10)
        broker.terminate()
        broker.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--broker", default="target/release/baton", help="the baton binary (a release build)")
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--prefetch", type=int, default=0, help="baton worker --prefetch")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--loglevel", default="INFO", help="the worker's --loglevel (default INFO, its default)")
    parser.add_argument("--profile", metavar="FILE",
                        help="py-spy flame graph (.svg) or collapsed stacks (.txt) of the worker in the last run")
    parser.add_argument("--sdk", metavar="DIR", help="the directory holding the baton package the worker runs")
    args = parser.parse_args()
    if args.profile and shutil.which("py-spy") is None:
        parser.error("--profile needs py-spy on PATH (pip install py-spy)")
    seconds, cpus = [], []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="baton-bench-") as tmp:
            profile = args.profile if i == args.runs - 1 else None
            took, cpu = one_run(args, Path(tmp), profile)
        seconds.append(took)
        cpus.append(cpu)
        print(f"run {i + 1}: {args.tasks} tasks in {took:.2f}s = {args.tasks / took:.0f} tasks/s, "
              f"worker CPU {cpu / args.tasks * 1e6:.0f} us/task", flush=True)
    median = statistics.median(seconds)
    print(f"median: {median:.2f}s = {args.tasks / median:.0f} tasks/s, worker CPU "
          f"{statistics.median(cpus) / args.tasks * 1e6:.0f} us/task "
          f"(concurrency {args.concurrency}, prefetch {args.prefetch}, loglevel {args.loglevel})")


if __name__ == "__main__":
    main()
