#!/usr/bin/env python3
"""Baton against Celery 5 + Redis, with Python workers running identical no-op tasks.

    python bench/python/bench.py --system {baton,celery} --workload noop chains executors latency
        [--producer loop batch] --tasks N --procs P --concurrency C --runs R
        [--baton-bin PATH] [--no-durable] [--batch-size B] [--store postgres://...]

Each invocation starts one system on 127.0.0.1 (free ports, a temporary
directory), measures the workloads it is given, prints one JSON line per
figure on stdout and a readable line on stderr, and stops exactly the
processes it started (also on an error, Ctrl-C or SIGTERM).

What is measured, identically for both systems:

* **procs P, concurrency C**: P worker processes (``python -m baton worker``
  / ``celery worker``), each running up to C tasks at once (Baton: C threads;
  Celery: the prefork pool, C child processes). Celery's workers take 4 x C
  tasks ahead (its default prefetch); Baton's take C, or C + N with
  ``--prefetch N`` (``baton worker --prefetch``).
* **Task bodies** are no-ops that append a fixed-size record (task index, role,
  ``time.time()`` at body start) to a file (:mod:`records`); the harness knows
  that all N units ran from the file's size. A chain is done when its last step
  ran, an executor when its on_success callback ran.
* **Throughput** (noop, chains, executors) = N / (start time of the last body
  - time of the first submit). The clock starts before the producer builds its
  first submission, so producer cost counts: a benchmark of what users get.
* **Producer** ``loop``: ``.delay()`` (or ``apply_async``) once per unit from
  one thread, as users write it. ``batch`` (Baton only): ``app.submit_many``
  with ``--batch-size`` chains per call.
* **Latency** = body start - the moment just before ``.delay()`` was called.
  Low load: 200 tasks one at a time, each submitted 5 ms after the previous
  one ran. Under load: N tasks paced at half the noop throughput (loop
  producer) this invocation measured (the median of the noop figure when it
  was asked for, else one run), or at ``--load-rate`` (to load both systems
  equally); every task's latency counts.
  Reported as p50 and p99 (milliseconds), each with its own JSON line.
* **CPU per task under load** (``latency_load_cpu``, microseconds): the CPU time
  (user + system) that every process of the system (broker or redis-server,
  workers with their pool processes) and the producer used during a paced
  latency run, divided by its tasks: what each system costs at the same load.
* **CPU per unit by process** (``cpu_us_per_unit`` of each throughput line,
  microseconds): the same CPU time, for each process the harness started and
  the producer, over the measured runs (waits between them included),
  divided by their units: where the time of a throughput figure goes.
* **Store**: Baton keeps its store in sled (a temporary data directory), or
  with ``--store postgres://USER@HOST:PORT/DB`` in a fresh database that
  ``psql`` creates on that server (the line says ``"store": "postgres"``).
* Each workload is warmed up once (300 units) and then measured ``--runs``
  times; a line gives every run, their median, min and max. Throughput lines
  also give ``producer_rate``, the median rate at which the producer submitted:
  when it is close to the throughput, the producer was the bottleneck.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from typing import Callable, Dict, List, Optional, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)  # records and the two task modules, for the harness and its workers

import records  # noqa: E402


def psql() -> str:
    """PostgreSQL's ``psql``: $PG_BIN's, the PATH's, or the newest of Debian's."""
    found = [os.path.join(os.environ["PG_BIN"], "psql")] if os.environ.get("PG_BIN") else []
    found += [p for p in [shutil.which("psql")] if p]
    found += sorted(glob.glob("/usr/lib/postgresql/*/bin/psql"), reverse=True)
    if not found:
        raise SystemExit("--store needs psql (PostgreSQL's client) to create the database: set PG_BIN")
    return found[0]


def fresh_database(server: str) -> str:
    """A new database on the PostgreSQL server of ``server`` (a URL whose user may create
    databases), for one broker; its URL. The suite's server is its own and removed after
    the run, so the database is not dropped."""
    base, sep, _ = server.rpartition("/")
    if not sep or not base.startswith("postgres"):
        raise SystemExit(f"--store {server}: expected postgres://USER@HOST:PORT/DB")
    name = f"baton_bench_py_{os.getpid()}_{time.time_ns()}"
    subprocess.run([psql(), server, "-q", "-c", f"CREATE DATABASE {name}"], check=True)
    return f"{base}/{name}"

WORKLOADS = {
    # workload: (role that completes a unit, records per unit, unit)
    "noop": (records.NOOP, 1, "tasks/s"),
    "cpu": (records.CPU, 1, "tasks/s"),
    "chains": (records.FAST, 2, "chains/s"),
    "executors": (records.ON_SUCCESS, 3, "executors/s"),
}
WARMUP = 300
LOW_TASKS = 200
LOW_PAUSE = 0.005
LOAD_SHARE = 0.5
STALL_SECONDS = 60.0
"""A run fails when no task body ran for this long while some were still due."""
POLL = 0.001


# -- processes ---------------------------------------------------------------------


class Processes:
    """The processes this invocation started, each the leader of a new process group.

    A new group (session) keeps the terminal's Ctrl-C away from the children,
    so that the harness stops them in order, and lets :meth:`stop` reach a
    Celery worker's pool children without touching anything it did not start.
    Output goes to a log file per process, shown when a process fails.
    """

    def __init__(self, logdir: str) -> None:
        self.logdir = logdir
        self.running: List[tuple[str, subprocess.Popen, str]] = []

    def start(self, name: str, argv: Sequence[str], env: Optional[Dict[str, str]] = None) -> None:
        path = os.path.join(self.logdir, f"{name}.log")
        with open(path, "wb") as log:
            proc = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, cwd=HERE, start_new_session=True,
            )
        self.running.append((name, proc, path))

    def check(self) -> None:
        """Raise if a process has exited: the benchmark would wait for it forever."""
        for name, proc, path in self.running:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with status {proc.returncode}\n{tail(path)}")

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n{tail(path)}" for name, _, path in self.running)

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by every live process this object
        started, with their children, plus this process's own (the producer)."""
        return sum(self.cpu_by_name().values())

    def cpu_by_name(self) -> Dict[str, float]:
        """CPU time (user + system, seconds) used so far by each live process this
        object started, by its name, with its children (each leads its own
        process group: a Celery worker's pool processes are in its group), and
        by this process (``producer``). Linux only (``/proc``)."""
        names = {proc.pid: name for name, proc, _ in self.running}
        ticks = dict.fromkeys(names.values(), 0)
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:  # it exited meanwhile
                continue
            fields = stat[stat.rindex(")") + 2:].split()  # fields[0] is the state (field 3)
            name = names.get(int(fields[2]))  # pgrp
            if name is not None:
                ticks[name] += int(fields[11]) + int(fields[12])  # utime, stime
        hz = os.sysconf("SC_CLK_TCK")
        own = os.times()
        return {**{name: n / hz for name, n in ticks.items()}, "producer": own.user + own.system}

    def stop(self) -> None:
        """Stop the processes in reverse order of their start, workers before their broker.

        Each leader gets SIGTERM (Celery's and Baton's warm shutdown; a Celery
        worker stops its own pool) and up to 10 s, then its group gets SIGKILL.
        The group is also killed after a clean exit, for leftovers: the group
        id names no one else's processes while one of its members is alive.
        """
        while self.running:
            _, proc, _ = self.running.pop()
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


def tail(path: str, lines: int = 20) -> str:
    with open(path, "rb") as f:
        return b"\n".join(f.read().splitlines()[-lines:]).decode(errors="replace")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(ready: Callable[[], bool], what: str, procs: Processes, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        procs.check()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready after {timeout:.0f}s\n{procs.logs()}")
        time.sleep(0.05)


def first_line(argv: Sequence[str]) -> str:
    return subprocess.run(list(argv), capture_output=True, text=True, check=True).stdout.strip().splitlines()[0]


def python_versions(*packages: str) -> Dict[str, str]:
    return {"python": platform.python_version(), **{p: version(p) for p in packages}}


# -- the two systems ---------------------------------------------------------------


class BatonSystem:
    """The broker binary with a temporary data directory and P ``python -m baton worker``s."""

    name = "baton"

    def __init__(self, args: argparse.Namespace, procs: Processes, tmp: str, env: Dict[str, str]) -> None:
        if not os.access(args.baton_bin, os.X_OK):
            raise SystemExit(f"no broker binary at {args.baton_bin}: cargo build --release -p baton-server")
        self.args, self.procs, self.tmp, self.env = args, procs, tmp, env

    def start(self) -> None:
        address = f"127.0.0.1:{free_port()}"
        store = (["--store", fresh_database(self.args.store)] if self.args.store
                 else ["--data", os.path.join(self.tmp, "baton-data")])
        argv = [self.args.baton_bin, "serve", "--listen", address, *store]
        self.procs.start("baton-broker", argv + (["--no-durable"] if self.args.no_durable else []))
        # BATON_ADDR is the SDK's variable; BATON_ADDRESS too, for SDK versions
        # before it (the new ones ignore it when BATON_ADDR is set).
        for var in ("BATON_ADDR", "BATON_ADDRESS"):
            self.env[var] = os.environ[var] = address
        import baton_tasks
        import grpc
        from baton import pb

        if not (hasattr(baton_tasks.app, "flush") and hasattr(baton_tasks.app, "submit_many")):
            raise SystemExit("this Baton SDK has no pipelined delay() (app.flush) or app.submit_many: "
                             "reinstall it with bench/python/setup.sh")
        self.tasks = baton_tasks
        for k in range(self.args.procs):
            self.procs.start(f"baton-worker-{k}", [
                sys.executable, "-m", "baton", "worker", "--app", "baton_tasks:app", "--queues", "general",
                "--concurrency", str(self.args.concurrency),
                *(["--prefetch", str(self.args.prefetch)] if self.args.prefetch is not None else []),
                *(["--pool", self.args.pool] if self.args.pool else []),
                "--name", f"bench{k}", "--loglevel", "WARNING",
            ], self.env)
        admin = pb.AdminStub(baton_tasks.app.channel)

        def workers_connected() -> bool:
            try:
                return len(admin.ListWorkers(pb.ListWorkersRequest(), timeout=1).workers) >= self.args.procs
            except grpc.RpcError:  # the broker is not listening yet
                return False

        wait_until(workers_connected, "baton workers", self.procs)

    def producer(self, workload: str, kind: str) -> Callable[[int], None]:
        """A function that submits units 0..n-1 of ``workload`` and returns.

        With the pipelined SDK, ``.delay()`` returns before the broker has
        stored the chain; ``app.flush()`` then waits for the last
        acknowledgment, so a refused submission fails the run here."""
        app = self.tasks.app
        if kind == "batch":
            build, options = self.tasks.BATCH[workload], self.tasks.BATCH_OPTIONS[workload]
            size = self.args.batch_size

            def submit_batches(n: int) -> None:
                for first in range(0, n, size):
                    app.submit_many([build(i) for i in range(first, min(n, first + size))], **options)

            return submit_batches
        one = self.tasks.LOOP[workload]

        def submit_loop(n: int) -> None:
            for i in range(n):
                one(i)
            app.flush()

        return submit_loop

    def versions(self) -> Dict[str, str]:
        return {"baton": first_line([self.args.baton_bin, "--version"]),
                **python_versions("baton-sdk", "grpcio", "protobuf")}

    def settings(self, producer: str) -> Dict[str, object]:
        settings: Dict[str, object] = {
            "durable": "fsync before acknowledging a submission" if not self.args.no_durable
            else "--no-durable: acknowledged before the store is flushed",
            "worker": f"python -m baton worker ({self.args.pool or 'threads'} pool), --loglevel WARNING",
            "prefetch": "the SDK's default" if self.args.prefetch is None else self.args.prefetch,
            "broker": "baton serve, defaults otherwise",
            "store": "PostgreSQL (--store), a fresh database" if self.args.store else "sled (--data)",
            "delay": "pipelined" if getattr(self.tasks.app, "pipeline", False) else "synchronous",
        }
        if producer == "batch":
            settings["batch producer"] = (
                f"app.submit_many, {self.args.batch_size} chains per call; executors share "
                "on_success.s()/on_failure.s() callbacks (fast returns the unit's index)")
        return settings


class CelerySystem:
    """Its own redis-server (AOF, fsync every second) and P prefork ``celery worker``s."""

    name = "celery"

    def __init__(self, args: argparse.Namespace, procs: Processes, tmp: str, env: Dict[str, str]) -> None:
        if args.producer != ["loop"]:
            raise SystemExit("celery has only the loop producer (.delay() per task)")
        self.args, self.procs, self.tmp, self.env = args, procs, tmp, env
        self.redis_persistence = (
            ["appendonly no"] if args.no_durable else ["appendonly yes", "appendfsync everysec"]
        )

    def start(self) -> None:
        port = free_port()
        conf = os.path.join(self.tmp, "redis.conf")
        with open(conf, "w") as f:
            f.write("\n".join([
                f"port {port}", "bind 127.0.0.1", f"dir {self.tmp}", 'save ""', "daemonize no",
                *self.redis_persistence,
            ]) + "\n")
        self.procs.start("redis", ["redis-server", conf])
        url = f"redis://127.0.0.1:{port}/0"
        self.env["BENCH_REDIS_URL"] = os.environ["BENCH_REDIS_URL"] = url
        import celery_tasks
        import redis

        self.tasks = celery_tasks
        client = redis.Redis.from_url(url)

        def redis_up() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        wait_until(redis_up, "redis-server", self.procs)
        for k in range(self.args.procs):
            self.procs.start(f"celery-worker-{k}", [
                sys.executable, "-m", "celery", "-A", "celery_tasks", "worker", "-P", "prefork",
                "-c", str(self.args.concurrency), "-Q", "general", "-n", f"bench{k}@%h", *self.WORKER_FLAGS,
            ], self.env)
        wait_until(
            lambda: len(celery_tasks.app.control.ping(timeout=0.5)) >= self.args.procs,
            "celery workers", self.procs,
        )

    WORKER_FLAGS = ["--without-heartbeat", "--without-gossip", "--without-mingle", "--loglevel", "WARNING"]

    def producer(self, workload: str, kind: str) -> Callable[[int], None]:
        """A function that submits units 0..n-1 of ``workload`` and returns."""
        one = self.tasks.LOOP[workload]

        def submit_loop(n: int) -> None:
            for i in range(n):
                one(i)

        return submit_loop

    def versions(self) -> Dict[str, str]:
        redis_server = first_line(["redis-server", "--version"]).split(" v=")[1].split()[0]
        return {"redis-server": redis_server, **python_versions("celery", "kombu", "redis", "billiard")}

    def settings(self, producer: str) -> Dict[str, object]:
        return {
            **self.tasks.SETTINGS,
            "worker": "celery worker -P prefork " + " ".join(self.WORKER_FLAGS),
            "redis": ", ".join(self.redis_persistence) + ', save ""',
        }


SYSTEMS = {"baton": BatonSystem, "celery": CelerySystem}


# -- measuring -----------------------------------------------------------------------


class Bench:
    """Runs workloads against a started system and reads the records its tasks write."""

    def __init__(self, system, procs: Processes, path: str) -> None:
        self.system, self.procs, self.path = system, procs, path
        self.seen = 0  # records consumed by earlier runs
        self.noop_rate: Optional[float] = None  # noop throughput (loop producer), paces the load

    def wait_records(self, n: int, what: str) -> List[records.Record]:
        """Wait until the tasks wrote ``n`` more records, and return those."""
        target = self.seen + n
        last, last_change = self.seen, time.monotonic()
        while (have := records.count(self.path)) < target:
            now = time.monotonic()
            if have != last:
                last, last_change = have, now
            elif now - last_change > STALL_SECONDS:
                raise RuntimeError(
                    f"{what}: {have - self.seen} of {n} task bodies ran, then none for {STALL_SECONDS:.0f}s\n"
                    + self.procs.logs())
            self.procs.check()
            time.sleep(POLL)
        if have > target:
            raise RuntimeError(f"{what}: {have - self.seen} task bodies ran for {n} tasks (some ran twice)")
        runs = records.read(self.path, self.seen, n)
        self.seen = target
        return runs

    def throughput(self, workload: str, producer: str, n: int) -> Tuple[float, float]:
        """Units per second from the first submit to the start of the last body, and
        units per second the producer submitted (to tell when it was the bottleneck)."""
        role, per_unit, _ = WORKLOADS[workload]
        submit = self.system.producer(workload, producer)
        start = time.time()
        submit(n)
        submitted = time.time()
        runs = self.wait_records(n * per_unit, f"{workload}/{producer}")
        done = sorted(r.index for r in runs if r.role == role)
        if done != list(range(n)) or any(r.role == records.ON_FAILURE for r in runs):
            raise RuntimeError(f"{workload}/{producer}: the records do not show each unit completed once")
        return n / (max(r.time for r in runs) - start), n / (submitted - start)

    def latencies(self, n: int, rate: Optional[float]) -> Tuple[List[float], float]:
        """Submit-to-start latencies (ms) of ``n`` noop tasks, and the CPU time
        (microseconds) that all processes of the system and the producer used per
        task meanwhile.

        ``rate=None``: one at a time, each submitted ``LOW_PAUSE`` after the
        previous one ran. Otherwise paced at ``rate`` tasks/s from this thread
        (a late submission goes at once, the pace is not reset)."""
        submit = self.system.tasks.LOOP["noop"]
        submitted = [0.0] * n
        cpu = self.procs.cpu_seconds()
        if rate is None:
            runs = []
            for i in range(n):
                submitted[i] = time.time()
                submit(i)
                runs += self.wait_records(1, "latency (low load)")
                time.sleep(LOW_PAUSE)
        else:
            start = time.perf_counter()
            for i in range(n):
                ahead = start + i / rate - time.perf_counter()
                if ahead > 0:
                    time.sleep(ahead)
                submitted[i] = time.time()
                submit(i)
            runs = self.wait_records(n, "latency (load)")
        cpu = self.procs.cpu_seconds() - cpu
        return [(r.time - submitted[r.index]) * 1000 for r in runs], cpu / n * 1e6


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile: the smallest value with at least p% of values at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def measure(bench: Bench, args: argparse.Namespace, workload: str, producer: str) -> List[dict]:
    """Warm up once, run ``args.runs`` times; one result (a dict) per figure."""
    if workload != "latency":
        bench.throughput(workload, producer, WARMUP)
        cpu = bench.procs.cpu_by_name()
        runs, submits = zip(*(bench.throughput(workload, producer, args.tasks) for _ in range(args.runs)))
        after = bench.procs.cpu_by_name()
        if (workload, producer) == ("noop", "loop"):
            bench.noop_rate = statistics.median(runs)
        units = args.runs * args.tasks
        return [result(args, workload, producer, args.tasks, WORKLOADS[workload][2], list(runs),
                       producer_rate=round(statistics.median(submits), 1),
                       # CPU of each process per unit over the measured runs (waits between them included)
                       cpu_us_per_unit={name: round((after[name] - cpu.get(name, 0.0)) / units * 1e6, 1)
                                        for name in after})]
    bench.throughput("noop", "loop", WARMUP)
    if args.load_rate is None and bench.noop_rate is None:  # no noop figure yet: one run sets the pace
        bench.noop_rate = bench.throughput("noop", "loop", args.tasks)[0]
    rate = args.load_rate or LOAD_SHARE * bench.noop_rate
    figures: Dict[str, List[float]] = {}
    for _ in range(args.runs):
        low, _ = bench.latencies(LOW_TASKS, None)
        load, cpu = bench.latencies(args.tasks, rate)
        for name, values in (("low", low), ("load", load)):
            for p in (50, 99):
                figures.setdefault(f"latency_{name}_p{p}", []).append(percentile(values, p))
        figures.setdefault("latency_load_cpu", []).append(cpu)
    return [
        result(args, name, producer, LOW_TASKS if "low" in name else args.tasks,
               "us/task" if name.endswith("cpu") else "ms", runs,
               **({} if "low" in name else {"load_rate": round(rate, 1),
                                            # "half": this system's own half capacity; "set": --load-rate
                                            "load": "set" if args.load_rate else "half"}))
        for name, runs in figures.items()
    ]


def result(args: argparse.Namespace, workload: str, producer: str, tasks: int, unit: str,
           runs: List[float], **extra: object) -> dict:
    digits = 3 if unit == "ms" else 1
    return {
        "system": args.system, "workload": workload, "producer": producer, "durable": not args.no_durable,
        "workers": "python", "procs": args.procs, "concurrency": args.concurrency,
        **({"prefetch": args.prefetch} if args.prefetch else {}),
        **({"window": "default"} if args.system == "baton" and args.prefetch is None else {}),
        **({"pool": args.pool} if args.pool else {}), **({"defaults": True} if args.defaults else {}),
        **({"store": "postgres"} if args.store else {}),
        "tasks": tasks,
        "unit": unit, "runs": [round(r, digits) for r in runs], "median": round(statistics.median(runs), digits),
        "min": round(min(runs), digits), "max": round(max(runs), digits), **extra,
    }


def human(line: dict) -> str:
    durable = "durable" if line["durable"] else "no-durable"
    prefetch = f"+{line['prefetch']}" if line.get("prefetch") else "+default" if line.get("window") else ""
    prefetch += f" {line['pool']}" if line.get("pool") else ""
    prefetch += " (defaults)" if line.get("defaults") else ""
    prefetch += " on PostgreSQL" if line.get("store") == "postgres" else ""
    cpu = line.get("cpu_us_per_unit")
    split = "" if not cpu else "; CPU us/unit: " + ", ".join(f"{name} {us:g}" for name, us in cpu.items())
    return (f"{line['system']:6} {line['workload']:16} {line['producer']:5} {durable:10} "
            f"P={line['procs']} C={line['concurrency']}{prefetch} N={line['tasks']}: {line['median']:g} {line['unit']} "
            f"[{line['min']:g}-{line['max']:g}] over {len(line['runs'])} runs{split}")


# -- command line ------------------------------------------------------------------------


def parse(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--system", choices=sorted(SYSTEMS), required=True)
    p.add_argument("--workload", nargs="+", choices=[*WORKLOADS, "latency"], required=True)
    p.add_argument("--producer", nargs="+", choices=["loop", "batch"], default=["loop"],
                   help="loop: .delay() per unit; batch: app.submit_many (Baton). Latency uses loop only.")
    p.add_argument("--tasks", type=int, default=5000, help="units per run (N)")
    p.add_argument("--procs", type=int, default=1, help="worker processes (P)")
    p.add_argument("--concurrency", type=int, default=8, help="tasks at once per worker process (C)")
    p.add_argument("--prefetch", type=int, default=None,
                   help="Baton: assignments each worker holds beyond C (baton worker --prefetch; default: not "
                        "given, the SDK's default window); Celery always runs with its default prefetch "
                        "multiplier 4, a window of 4 x C")
    p.add_argument("--pool", choices=["threads", "processes"],
                   help="Baton: baton worker --pool (default: not given, the SDK's default, threads)")
    p.add_argument("--defaults", action="store_true",
                   help="label the lines as the defaults-against-defaults comparison (report.py pairs them with "
                        "each other whatever P and C): nothing tuned, so no --prefetch or --pool for Baton")
    p.add_argument("--runs", type=int, default=3, help="measured runs per workload (R)")
    p.add_argument("--baton-bin", default=os.path.join(ROOT, "target", "release", "baton"))
    p.add_argument("--no-durable", action="store_true",
                   help="Baton: --no-durable; Celery: Redis without AOF (appendonly no)")
    p.add_argument("--batch-size", type=int, default=1000, help="chains per submit_many call")
    p.add_argument("--store", metavar="URL",
                   help="Baton: keep the store in PostgreSQL, in a fresh database on this server "
                        "(postgres://USER@HOST:PORT/DB, a user that may create databases); default: sled")
    p.add_argument("--load-rate", type=float,
                   help="tasks/s of the latency-under-load phase (default: half the measured noop throughput)")
    args = p.parse_args(argv)
    args.baton_bin = os.path.abspath(args.baton_bin)  # the processes start in this directory
    if min(args.tasks, args.procs, args.concurrency, args.runs, args.batch_size) < 1:
        p.error("--tasks, --procs, --concurrency, --runs and --batch-size must be at least 1")
    if args.prefetch is not None and (args.prefetch < 0 or args.system != "baton"):
        p.error("--prefetch is a number >= 0, for --system baton only")
    if args.defaults and (args.prefetch is not None or args.pool):
        p.error("--defaults runs the SDK's defaults: no --prefetch, no --pool")
    if args.store and args.system != "baton":
        p.error("--store is for --system baton only")
    if args.pool and args.system != "baton":
        p.error("--pool is for --system baton only (Celery runs its default, prefork)")
    if args.load_rate is not None and args.load_rate <= 0:
        p.error("--load-rate must be positive")
    return args


def main() -> int:
    args = parse()
    # SIGTERM unwinds like Ctrl-C, through the finally that stops the processes.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="baton-bench-") as tmp:
        path = os.path.join(tmp, "records.bin")
        open(path, "wb").close()
        env = {**os.environ, records.RECORDS_ENV: path, "PYTHONPATH": os.pathsep.join(filter(None, [HERE, os.environ.get("PYTHONPATH")]))}
        procs = Processes(tmp)
        try:
            system = SYSTEMS[args.system](args, procs, tmp, env)
            system.start()
            bench = Bench(system, procs, path)
            versions = system.versions()
            for workload in args.workload:
                for producer in ["loop"] if workload == "latency" else args.producer:
                    for line in measure(bench, args, workload, producer):
                        line.update(versions=versions, settings=system.settings(producer))
                        print(json.dumps(line), flush=True)
                        print(human(line), file=sys.stderr, flush=True)
        finally:
            procs.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
