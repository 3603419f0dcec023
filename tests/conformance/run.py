#!/usr/bin/env python3
"""The conformance runner: every scenario of scenarios.json against each SDK's
conformance worker, and the mixed ones across the four SDKs at once.

    tests/conformance/run.sh                       # builds what it needs, then runs this
    python tests/conformance/run.py [--sdk rust,go] [--scenario noop ...] [--write-docs]

It runs with the Python SDK installed (for the generated ``baton.v1`` stubs,
``baton.pb``; nothing else of the SDK's client is used) and needs, built
beforehand (run.sh does it):

* the broker: ``$BATON_BIN``, else ``target/debug/baton``;
* rust: ``target/debug/examples/conformance_worker`` (``cargo build --example
  conformance_worker``), or ``$BATON_CONFORMANCE_RUST_WORKER``;
* python: ``tests/conformance/python/tasks.py``, run by this interpreter;
* typescript: the SDK built (``worker-sdk/typescript``: ``npm ci && npm run
  build``); this runner compiles ``tests/conformance/typescript`` with its tsc;
* go: the Go SDK's ``pb/`` generated (``worker-sdk/go/tools/gen-proto.sh``);
  this runner builds ``tests/conformance/go/worker`` with ``go build``.

For each SDK it starts a broker (``serve --listen 127.0.0.1:<free port> --data
<temp dir>``) and that SDK's worker on the queues general and heavy; for the
mixed scenarios, a broker and the four workers, each on the queue
``conf-<sdk>`` alone. Before submitting a scenario's chains it pauses their
queues, opens a WatchChain on each chain, and resumes the queues, so the
watch sees every event. Verdicts come only from what the broker recorded
(WatchChain events, GetChain, ListWorkers) and from what the workers wrote
to ``$BATON_CONFORMANCE_RECORD`` (enter/leave lines of throttle holders).
It ends only the processes it started (each in its own process group, by
pid), and every wait is bounded.

The result is a table of scenario x SDK on stdout (and, with --write-docs, in
docs/conformance.md); the exit status is 0 only when every cell passed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import grpc
from baton import pb

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SDKS = ("rust", "python", "typescript", "go")
MIXED = "mixed"
CHAIN_PATIENCE_S = 60.0
"""Longest a scenario's chains may take to end."""
SETTLE_S = 10.0
"""Longest the callbacks of an ended chain may take to settle."""
START_PATIENCE_S = 60.0
"""Longest a broker or a worker may take to come up."""
WORKER_CONCURRENCY = 4


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# Processes: the broker and the workers, each in its own process group.
# ---------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    popen: "subprocess.Popen[bytes]"
    log_path: Path

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """Ends the process this runner started (and its group), by its pid."""
        if self.popen.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.popen.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue


def spawn(name: str, argv: Sequence[str], workdir: Path, env: Dict[str, str], cwd: Optional[Path] = None) -> Proc:
    log_path = workdir / f"{name}.log"
    out = open(log_path, "wb")
    popen = subprocess.Popen(
        list(argv),
        cwd=str(cwd) if cwd else None,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # its own process group, ended by pid
    )
    out.close()
    return Proc(name, popen, log_path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Prepared:
    """How to start each SDK's worker, once its prerequisites are built."""

    argv: Dict[str, List[str]] = field(default_factory=dict)
    cwd: Dict[str, Path] = field(default_factory=dict)


def prepare(sdks: Sequence[str], workdir: Path) -> Prepared:
    """Checks or builds what each SDK's worker needs; raises SystemExit naming what is missing."""
    p = Prepared()
    for sdk in sdks:
        if sdk == "rust":
            exe = Path(
                os.environ.get(
                    "BATON_CONFORMANCE_RUST_WORKER", REPO / "target" / "debug" / "examples" / "conformance_worker"
                )
            )
            if not exe.is_file():
                raise SystemExit(f"rust: {exe} is missing: cargo build --example conformance_worker")
            p.argv[sdk] = [str(exe)]
        elif sdk == "python":
            p.argv[sdk] = [sys.executable, "-m", "baton", "worker", "--app", "tasks:app"]
            p.cwd[sdk] = HERE / "python"
        elif sdk == "typescript":
            ts = REPO / "worker-sdk" / "typescript"
            cli, tsc = ts / "dist" / "cjs" / "cli.js", ts / "node_modules" / "typescript" / "bin" / "tsc"
            if not cli.is_file() or not tsc.is_file():
                raise SystemExit(f"typescript: {cli} or {tsc} is missing: (cd {ts} && npm ci && npm run build)")
            subprocess.run(["node", str(tsc), "-p", str(HERE / "typescript")], check=True, timeout=300)
            p.argv[sdk] = ["node", str(cli), "worker", "--app", str(HERE / "typescript" / "tasks.js")]
        elif sdk == "go":
            if not (REPO / "worker-sdk" / "go" / "pb").is_dir():
                raise SystemExit("go: worker-sdk/go/pb is missing: bash worker-sdk/go/tools/gen-proto.sh")
            exe = workdir / "go-conformance-worker"
            subprocess.run(["go", "build", "-o", str(exe), "./worker"], cwd=HERE / "go", check=True, timeout=600)
            p.argv[sdk] = [str(exe)]
        else:
            raise SystemExit(f"unknown SDK {sdk!r}: one of {', '.join(SDKS)}")
    return p


def worker_argv(prepared: Prepared, sdk: str, queues: Sequence[str]) -> List[str]:
    # The four CLIs take the same flags, but Go's start with one dash.
    dash = "-" if sdk == "go" else "--"
    return prepared.argv[sdk] + [
        f"{dash}queues",
        ",".join(queues),
        f"{dash}concurrency",
        str(WORKER_CONCURRENCY),
        f"{dash}name",
        f"conformance-{sdk}",
    ]


class Session:
    """One broker and the conformance workers serving it."""

    def __init__(self, label: str, bin_path: Path, workdir: Path) -> None:
        self.label = label
        self.workdir = workdir
        self.record = workdir / "record.jsonl"
        self.record.touch()
        self.procs: List[Proc] = []
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.broker = spawn(
            f"broker-{label}",
            [str(bin_path), "serve", "--listen", self.addr, "--data", str(workdir / "data")],
            workdir,
            dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn")),
        )
        self.procs.append(self.broker)
        self.channel = grpc.insecure_channel(self.addr)
        try:
            grpc.channel_ready_future(self.channel).result(timeout=START_PATIENCE_S)
        except grpc.FutureTimeoutError:
            self.close()
            raise RuntimeError(f"the broker did not come up on {self.addr}:\n{self.broker.tail()}")
        self.broker_stub = pb.BrokerStub(self.channel)
        self.admin = pb.AdminStub(self.channel)

    def start_worker(self, prepared: Prepared, sdk: str, queues: Sequence[str]) -> None:
        env = dict(os.environ, BATON_ADDR=self.addr, BATON_CONFORMANCE_RECORD=str(self.record))
        self.procs.append(
            spawn(f"worker-{self.label}-{sdk}", worker_argv(prepared, sdk, queues), self.workdir, env, prepared.cwd.get(sdk))
        )

    def wait_workers(self, names: Sequence[str]) -> None:
        deadline = time.monotonic() + START_PATIENCE_S
        while True:
            seen = {w.worker_name for w in self.admin.ListWorkers(pb.ListWorkersRequest(), timeout=10).workers}
            if all(n in seen for n in names):
                return
            dead = [p for p in self.procs if p.popen.poll() is not None]
            if dead or time.monotonic() > deadline:
                why = "\n".join(f"--- {p.name} ---\n{p.tail()}" for p in (dead or self.procs))
                raise RuntimeError(f"workers {sorted(set(names) - seen)} did not connect:\n{why}")
            time.sleep(0.1)

    def records(self) -> List[Dict[str, Any]]:
        out = []
        for line in self.record.read_text().splitlines():
            if line.strip():
                out.append(json.loads(line))
        return out

    def close(self) -> None:
        self.channel.close()
        # Workers first, so none of them reconnects to a dying broker.
        for p in reversed(self.procs):
            p.stop()


# ---------------------------------------------------------------------------
# Scenarios: from data to requests, and the broker's record back to verdicts.
# ---------------------------------------------------------------------------


def substitute(value: Any, sdk: str) -> Any:
    if isinstance(value, str):
        return value.replace("$sdk", sdk)
    if isinstance(value, list):
        return [substitute(v, sdk) for v in value]
    if isinstance(value, dict):
        if "$repeat" in value:
            return str(value["$repeat"]) * int(value["times"])
        return {k: substitute(v, sdk) for k, v in value.items()}
    return value


def signature(step: Dict[str, Any]) -> Any:
    if "group" in step:
        return pb.Signature(
            name=step.get("label", ""),
            immutable=not step.get("mutable", False),
            members=[signature(m) for m in step["group"]],
        )
    if "executor" in step:
        e = step["executor"]
        return pb.Signature(
            name=step.get("label", ""),
            executor=pb.Executor(
                steps=[signature(s) for s in e["steps"]],
                on_success=[signature(s) for s in e.get("on_success", [])],
                on_failure=[signature(s) for s in e.get("on_failure", [])],
            ),
        )
    options = pb.Options()
    for key, value in step.get("options", {}).items():
        setattr(options, key, value)
    if "sdk" in step:
        options.queue = f"conf-{step['sdk']}"
    return pb.Signature(
        name=step["task"],
        args=json.dumps(step.get("args", [])),
        kwargs=json.dumps(step.get("kwargs", {})),
        immutable=not step.get("mutable", False),
        options=options,
    )


def request(chain: Dict[str, Any]) -> Any:
    return pb.SubmitChainRequest(
        steps=[signature(s) for s in chain["steps"]],
        on_success=[signature(s) for s in chain.get("on_success", [])],
        on_failure=[signature(s) for s in chain.get("on_failure", [])],
        heavy=bool(chain.get("heavy", False)),
        context=chain.get("context", {}),
    )


ENDED = {pb.CHAIN_STATE_SUCCEEDED, pb.CHAIN_STATE_FAILED, pb.CHAIN_STATE_CANCELLED}
UNSETTLED = {
    pb.STEP_STATE_READY,
    pb.STEP_STATE_RUNNING,
    pb.STEP_STATE_SCHEDULED,
    pb.STEP_STATE_THROTTLED,
    pb.STEP_STATE_WAITING,
}


class Watch(threading.Thread):
    """Follows one chain's WatchChain stream to its end, keeping every event;
    cancels the chain once its first step runs when asked to."""

    def __init__(self, session: Session, chain_id: str, cancel_reason: Optional[str], patience: float) -> None:
        super().__init__(daemon=True)
        self.session, self.chain_id, self.cancel_reason = session, chain_id, cancel_reason
        self.patience = patience
        self.events: List[Any] = []
        self.first = threading.Event()
        self.error: Optional[str] = None
        self.call: Any = None

    def run(self) -> None:
        cancelled = False
        try:
            self.call = self.session.broker_stub.WatchChain(
                pb.WatchChainRequest(chain_id=self.chain_id), timeout=self.patience
            )
            for event in self.call:
                self.events.append(event)
                self.first.set()
                running = event.chain.steps and event.chain.steps[0].state == pb.STEP_STATE_RUNNING
                if self.cancel_reason is not None and running and not cancelled:
                    cancelled = True
                    self.session.broker_stub.CancelChain(
                        pb.CancelChainRequest(chain_id=self.chain_id, reason=self.cancel_reason), timeout=10
                    )
        except grpc.RpcError as e:
            self.error = f"WatchChain: {e.code().name}: {e.details()}"
        finally:
            self.first.set()


def wait_settled(session: Session, chain_id: str, patience: float) -> Any:
    """GetChain once the chain ended and none of its steps still runs: a run
    the broker told to stop (a cancelled chain's) stays RUNNING until its
    worker reports it."""
    deadline = time.monotonic() + patience
    while True:
        chain = session.broker_stub.GetChain(pb.GetChainRequest(chain_id=chain_id), timeout=10)
        steps = list(chain.steps) + list(chain.on_success) + list(chain.on_failure)
        if chain.state in ENDED and not any(s.state in UNSETTLED for s in steps):
            return chain
        if time.monotonic() > deadline:
            return chain
        time.sleep(0.05)


def enum_name(enum: Any, prefix: str, value: int) -> str:
    return str(enum.Name(value))[len(prefix) :]


def matches(expected: Any, actual: Any, chain_id: str) -> bool:
    if expected == "nonempty":
        return bool(actual)
    if expected == "$chain_id":
        return bool(actual == chain_id)
    if isinstance(expected, dict) and "$contains" in expected:
        return isinstance(actual, str) and str(expected["$contains"]) in actual
    if isinstance(expected, dict) and "$not" in expected:
        return not matches(expected["$not"], actual, chain_id)
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            k in actual and matches(v, actual[k], chain_id) for k, v in expected.items()
        )
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(expected) == len(actual)
            and all(matches(e, a, chain_id) for e, a in zip(expected, actual))
        )
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(expected) is type(actual) and expected == actual
    return bool(expected == actual)


def failure_dict(f: Any) -> Dict[str, Any]:
    return {
        "chain_id": f.chain_id,
        "phase": enum_name(pb.Phase, "PHASE_", f.phase),
        "step_index": f.step_index,
        "task_name": f.task_name,
        "task_id": f.task_id,
        "attempt": f.attempt,
        "error_type": f.error_type,
        "message": f.message,
        "traceback": f.traceback,
    }


def short(value: Any, limit: int = 300) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_step(where: str, exp: Dict[str, Any], step: Any, chain_id: str, problems: List[str]) -> None:
    def bad(what: str, want: Any, got: Any) -> None:
        problems.append(f"{where}.{what}: expected {short(want)}, broker recorded {short(got)}")

    for key, want in exp.items():
        if key == "state":
            got: Any = enum_name(pb.StepState, "STEP_STATE_", step.state)
        elif key in ("attempts", "retries", "polls", "queue"):
            got = getattr(step, key)
        elif key == "result":
            got = json.loads(step.result) if step.result else None
        elif key == "result_fields":
            got = json.loads(step.result) if step.result else None
        elif key == "worker_sdk":
            got = step.worker
            if not step.worker.startswith(f"conformance-{want}"):
                bad("worker", f"conformance-{want}", got)
            continue
        elif key == "failure":
            got = failure_dict(step.failure) if step.HasField("failure") else None
        elif key in ("min_run_ms", "max_run_ms"):
            got = step.finished_unix_ms - step.started_unix_ms
            if (got < want) if key == "min_run_ms" else (got > want):
                bad("finished - started (ms)", f"{'>=' if key == 'min_run_ms' else '<='} {want}", got)
            continue
        else:
            problems.append(f"{where}: unknown expectation {key!r} in scenarios.json")
            continue
        if not matches(want, got, chain_id):
            bad(key, want, got)


def subsequence(want: Sequence[str], got: Sequence[str]) -> bool:
    it = iter(got)
    return all(any(w == g for g in it) for w in want)


def check_chain(
    index: int, spec: Dict[str, Any], chain: Any, events: List[str], problems: List[str]
) -> None:
    exp = spec["expect"]
    where = f"chains[{index}]"
    cid = chain.chain_id
    state = enum_name(pb.ChainState, "CHAIN_STATE_", chain.state)
    if "state" in exp and not matches(exp["state"], state, cid):
        problems.append(
            f"{where}.state: expected {exp['state']}, broker recorded {state}"
            + (f" (failure: {chain.failure.error_type}: {chain.failure.message})" if chain.HasField("failure") else "")
        )
    if "result" in exp:
        got = json.loads(chain.result) if chain.result else None
        if not matches(exp["result"], got, cid):
            problems.append(f"{where}.result: expected {short(exp['result'])}, broker recorded {short(got)}")
    if "failure" in exp:
        got_f = failure_dict(chain.failure) if chain.HasField("failure") else None
        if not matches(exp["failure"], got_f, cid):
            problems.append(f"{where}.failure: expected {short(exp['failure'])}, broker recorded {short(got_f)}")
    for part in ("steps", "on_success", "on_failure"):
        steps = list(getattr(chain, part))
        for i, step_exp in enumerate(exp.get(part, [])):
            if i >= len(steps):
                problems.append(f"{where}.{part}[{i}]: missing")
                continue
            check_step(f"{where}.{part}[{i}]", step_exp, steps[i], cid, problems)
    if "events" in exp and not subsequence(exp["events"], events):
        problems.append(f"{where}: WatchChain events {events} do not contain {exp['events']} in order")


def holders(records: List[Dict[str, Any]]) -> int:
    """The most holders at once, from enter/leave lines (a leave and an enter
    at the same microsecond count the leave first)."""
    most = now = 0
    for r in sorted(records, key=lambda r: (r["t_us"], r["event"] == "enter")):
        now += 1 if r["event"] == "enter" else -1
        most = max(most, now)
    return most


def start_spacing(records: List[Dict[str, Any]], window_ms: int, most: int, span_ms: int) -> List[str]:
    """What is wrong with the enter times of a rate-limited identity: more
    than `most` in some window of `window_ms`, or the first and the last
    closer than `span_ms` (the starts bunched instead of spread at the rate)."""
    times = sorted(r["t_us"] for r in records if r["event"] == "enter")
    problems = []
    window_us = window_ms * 1000
    crowded = max((sum(1 for u in times if t <= u < t + window_us) for t in times), default=0)
    if crowded > most:
        problems.append(f"{crowded} starts within {window_ms} ms, at most {most} allowed")
    if len(times) > 1 and times[-1] - times[0] < span_ms * 1000:
        problems.append(f"the starts span {(times[-1] - times[0]) // 1000} ms, at least {span_ms} expected")
    return problems


@dataclass
class Verdict:
    ok: bool
    problems: List[str]
    seconds: float
    known: Optional[str] = None
    """Why this SDK is listed as failing this scenario (known_failures), if it
    is and every problem is the listed one."""
    listed: bool = False
    """The SDK is listed in the scenario's known_failures."""

    def expect(self, entry: Optional[Dict[str, Any]]) -> None:
        """Applies a known_failures entry: the failure is known only when every
        problem contains its text."""
        if entry is None:
            return
        self.listed = True
        if not self.ok and all(any(text in p for text in entry["problems"]) for p in self.problems):
            self.known = entry["why"]

    @property
    def counts_as_failure(self) -> bool:
        """A failure not known, or a listed one that passed."""
        return (not self.ok and self.known is None) or (self.ok and self.listed)

    @property
    def cell(self) -> str:
        if self.known is not None:
            return "known failure"
        if self.ok:
            return "**pass, listed as a known failure**" if self.listed else "pass"
        return "**FAIL**"


def run_scenario(session: Session, scenario: Dict[str, Any], sdk: str, queues: Sequence[str]) -> Verdict:
    started = time.monotonic()
    patience = float(scenario.get("patience_s", CHAIN_PATIENCE_S))
    problems: List[str] = []
    specs = [substitute(c, sdk) for c in scenario["chains"]]
    records = [substitute(r, sdk) for r in scenario.get("records", [])]
    admin, broker = session.admin, session.broker_stub
    # Paused queues: no step starts before every watch has its snapshot.
    for q in queues:
        admin.PauseQueue(pb.PauseQueueRequest(queue=q), timeout=10)
    watches: List[Watch] = []
    try:
        if scenario.get("parallel"):
            answers = broker.SubmitChains(pb.SubmitChainsRequest(chains=[request(c) for c in specs]), timeout=30).chains
            ids = [a.chain_id for a in answers]
        else:
            ids = [broker.SubmitChain(request(c), timeout=30).chain_id for c in specs]
        for cid, spec in zip(ids, specs):
            w = Watch(session, cid, spec.get("cancel_when_running"), patience)
            w.start()
            watches.append(w)
        for w in watches:
            w.first.wait(timeout=30)
    finally:
        for q in queues:
            admin.ResumeQueue(pb.ResumeQueueRequest(queue=q), timeout=10)
    deadline = time.monotonic() + patience + 1
    late = False
    for w in watches:
        w.join(timeout=max(0.0, deadline - time.monotonic()))
        if w.is_alive() or (w.error and "DEADLINE_EXCEEDED" in w.error):
            problems.append(f"chain {w.chain_id} did not end within {patience:.0f} s")
            late = True
            if w.call is not None:
                w.call.cancel()
        elif w.error:
            problems.append(f"chain {w.chain_id}: {w.error}")
    # Out of patience: the chains are judged as they are.
    chains = [wait_settled(session, cid, 0.0 if late else SETTLE_S) for cid in ids]
    for i, (spec, chain, w) in enumerate(zip(specs, chains, watches)):
        check_chain(i, spec, chain, [e.kind for e in w.events], problems)
    # A run the broker stopped (cancel, time limit) must still be reported:
    # until its outcome comes, it stays in its worker's in_flight.
    idle_ms = max((c["expect"].get("worker_idle_within_ms", 0) for c in specs), default=0)
    if idle_ms:
        task_ids = {s.task_id for c in chains for s in c.steps}
        until = time.monotonic() + idle_ms / 1000
        while True:
            busy = [
                (w.worker_name, t.task_id)
                for w in admin.ListWorkers(pb.ListWorkersRequest(), timeout=10).workers
                for t in w.in_flight
                if t.task_id in task_ids
            ]
            if not busy:
                break
            if time.monotonic() > until:
                problems.append(
                    f"the stopped run was not reported within {idle_ms} ms (still in flight on {busy[0][0]})"
                )
                break
            time.sleep(0.05)
    # Declared throttles: the broker's own run times never overlap.
    task = scenario.get("disjoint_runs")
    if task:
        runs = sorted(
            (s.started_unix_ms, s.finished_unix_ms, c.chain_id) for c in chains for s in c.steps if s.name == task
        )
        for a, b in zip(runs, runs[1:]):
            if b[0] < a[1]:
                problems.append(f"{task}: runs overlap by the broker's times: {a[:2]} and {b[:2]}")
    # In-body and declared throttles: the workers' enter/leave lines.
    if records:
        task_ids = {s.task_id for c in chains for s in c.steps}
        lines = [r for r in session.records() if r["task_id"] in task_ids]
        for rule in records:
            mine = [r for r in lines if r["task"] == rule["task"] and r["key"] == rule["key"]]
            enters = [r for r in mine if r["event"] == "enter"]
            most = holders(mine)
            what = f"records of ({rule['task']}, {rule['key']})"
            if most > rule["max_holders"]:
                problems.append(f"{what}: {most} holders at once, limit {rule['max_holders']}")
            if "holds" in rule and len(enters) != rule["holds"]:
                problems.append(f"{what}: {len(enters)} holds recorded, expected {rule['holds']}")
            if "starts" in rule:
                spacing = rule["starts"]
                problems += [
                    f"{what}: {p}"
                    for p in start_spacing(mine, spacing["window_ms"], spacing["most"], spacing["span_at_least_ms"])
                ]
            missing = set(rule.get("sdks", [])) - {r["sdk"] for r in enters}
            if missing:
                problems.append(f"{what}: no hold by {sorted(missing)}")
    return Verdict(not problems, problems, time.monotonic() - started)


# ---------------------------------------------------------------------------
# The table.
# ---------------------------------------------------------------------------


def table(scenarios: List[Dict[str, Any]], columns: Sequence[str], results: Dict[Tuple[str, str], Verdict]) -> str:
    lines = ["| scenario | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for s in scenarios:
        cells = []
        for col in columns:
            v = results.get((s["name"], col))
            if v is None:
                applies = (s["sdks"] == MIXED) == (col == MIXED)
                cells.append("not run" if applies else "—")
            else:
                cells.append(v.cell)
        lines.append(f"| {s['name']} | " + " | ".join(cells) + " |")
    lines += ["", "What each scenario checks (beyond the results and states in scenarios.json):", ""]
    lines += [f"- **{s['name']}**: {s['doc']}" for s in scenarios if s.get("doc")]
    known = [f"- {name} x {col}: {v.known}" for (name, col), v in sorted(results.items()) if v.known]
    if known:
        lines += ["", "Known failures (`known_failures` in scenarios.json):", ""] + known
    failures = [
        f"- {name} x {col}: "
        + ("; ".join(v.problems) if not v.ok else "passed: remove it from known_failures in scenarios.json")
        for (name, col), v in sorted(results.items())
        if v.counts_as_failure
    ]
    if failures:
        lines += ["", "Failures:", ""] + failures
    return "\n".join(lines)


DOC_HEADER = """# Conformance: scenario x SDK

Generated by `{command}`; do not edit by hand.

Each scenario of [`tests/conformance/scenarios.json`](../tests/conformance/scenarios.json)
runs against a broker served by one SDK's conformance worker (the columns rust,
python, typescript, go), or, for the mixed ones, by the workers of all four SDKs at
once (column mixed). Verdicts come from what the broker recorded (WatchChain events,
GetChain, ListWorkers) and from the workers' enter/leave records of throttle slots,
never from an SDK's own client. See [`tests/conformance/README.md`](../tests/conformance/README.md).

"""


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sdk", action="append", default=[], help="SDKs to check (comma-separated or repeated; default all four)")
    ap.add_argument("--scenario", action="append", default=[], help="only these scenarios (repeatable)")
    ap.add_argument("--scenarios", default=str(HERE / "scenarios.json"), help="the scenarios file")
    ap.add_argument("--no-mixed", action="store_true", help="skip the mixed scenarios")
    ap.add_argument("--write-docs", action="store_true", help="also write the table to docs/conformance.md")
    args = ap.parse_args(argv)
    sdks = [s for v in args.sdk for s in v.split(",") if s] or list(SDKS)
    bin_path = Path(os.environ.get("BATON_BIN", REPO / "target" / "debug" / "baton"))
    if not bin_path.is_file():
        raise SystemExit(f"the broker {bin_path} is missing: cargo build -p baton-server (or set $BATON_BIN)")
    scenarios = json.loads(Path(args.scenarios).read_text())["scenarios"]
    if args.scenario:
        unknown = set(args.scenario) - {s["name"] for s in scenarios}
        if unknown:
            raise SystemExit(f"unknown scenarios {sorted(unknown)}")
        scenarios = [s for s in scenarios if s["name"] in args.scenario]
    mixed = [s for s in scenarios if s["sdks"] == MIXED] if not args.no_mixed and set(SDKS) <= set(sdks) else []
    single = [s for s in scenarios if s["sdks"] == "each"]
    results: Dict[Tuple[str, str], Verdict] = {}
    with tempfile.TemporaryDirectory(prefix="baton-conformance-") as tmp:
        workdir = Path(tmp)
        prepared = prepare(sdks, workdir)
        plans: List[Tuple[str, List[str], List[Dict[str, Any]]]] = []
        if single:
            plans += [(sdk, [sdk], single) for sdk in sdks]
        if mixed:
            plans.append((MIXED, list(SDKS), mixed))
        for label, workers, todo in plans:
            sessiondir = workdir / label
            sessiondir.mkdir()
            log(f"--- {label}: broker and {', '.join(workers)} worker(s)")
            session = Session(label, bin_path, sessiondir)
            try:
                queues = [f"conf-{w}" for w in workers] if label == MIXED else ["general", "heavy"]
                for w in workers:
                    session.start_worker(prepared, w, [f"conf-{w}"] if label == MIXED else ["general", "heavy"])
                session.wait_workers([f"conformance-{w}" for w in workers])
                for s in todo:
                    try:
                        v = run_scenario(session, s, label, queues)
                    except Exception as e:  # a broken call is this cell's failure, not the run's
                        v = Verdict(False, [f"{type(e).__name__}: {e}"], 0.0)
                    v.expect(s.get("known_failures", {}).get(label))
                    results[(s["name"], label)] = v
                    mark = ("ok  " if v.ok else "FAIL") + (" (known failure)" if v.known else "")
                    log(f"{mark} {s['name']} x {label} ({v.seconds:.1f} s)")
                    for problem in v.problems:
                        log(f"     {problem}")
                for proc in session.procs:
                    if proc.popen.poll() is not None:
                        log(f"--- {proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
            finally:
                session.close()
    columns = [c for c in list(SDKS) + [MIXED] if c in sdks or (c == MIXED and mixed)]
    text = table(scenarios, columns, results)
    print(text)
    if args.write_docs:
        command = "tests/conformance/run.sh --write-docs"
        (REPO / "docs" / "conformance.md").write_text(DOC_HEADER.format(command=command) + text + "\n")
    return 1 if any(v.counts_as_failure for v in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
