"""Helpers of the integration tests: the broker process, events, waiting (see conftest.py)."""

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import grpc
import pytest

from baton import _transport, pb

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[3]
LEASE_MS = 2000


def wait_until(predicate, timeout, what, interval=0.05):
    """Poll ``predicate`` until it returns a truthy value; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def broker_binary():
    path = Path(os.environ.get("BATON_BIN") or REPO / "target" / "debug" / "baton")
    if path.is_file() and os.access(path, os.X_OK):
        return path
    message = f"baton broker binary not found at {path} (build it with `cargo build -p baton-server`, or set BATON_BIN)"
    if os.environ.get("BATON_REQUIRE_BROKER"):
        pytest.fail(message)
    pytest.skip(message)


def _terminate(proc, grace=5.0):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(grace)


class Broker:
    """A `baton serve` process on a free port; restartable on the same port and data.

    ``args`` are extra `baton serve` flags (``--tokens``, ``--tls-cert``...);
    ``token`` and ``tls`` are what the harness's own admin channel needs then.
    """

    def __init__(self, binary, data_dir, log_path, lease_ms, args=(), token=None, tls=None):
        self.binary = binary
        self.data_dir = data_dir
        self.log_path = log_path
        self.lease_ms = lease_ms
        self.args = list(args)
        self.token = token
        self.tls = _transport.tls_config(tls)
        self.address = f"127.0.0.1:{free_port()}"
        self.proc = None
        self._raw = None
        self._channel = None

    def start(self):
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [str(self.binary), "serve", "--listen", self.address, "--data", str(self.data_dir),
             "--lease-ms", str(self.lease_ms), *self.args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        self._raw, self._channel = _transport.sync_channel(self.address, self.token, self.tls)
        admin = pb.AdminStub(self._channel)

        def ready():
            if self.proc.poll() is not None:
                pytest.fail(f"broker exited with {self.proc.returncode}:\n{self.log()}")
            try:
                admin.ListQueues(pb.ListQueuesRequest(), timeout=0.5)
                return True
            except grpc.RpcError:
                return False

        wait_until(ready, 20, f"the broker on {self.address}")

    def kill(self):
        """SIGKILL the broker (crash)."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._raw.close()

    def stop(self):
        if self.proc is not None:
            _terminate(self.proc)
        if self._raw is not None:
            self._raw.close()

    @property
    def admin(self):
        return pb.AdminStub(self._channel)

    def workers(self):
        return list(self.admin.ListWorkers(pb.ListWorkersRequest(), timeout=5).workers)

    def log(self):
        return Path(self.log_path).read_text(errors="replace")[-5000:]


class Events:
    """The JSON lines the demo tasks append (see demo_app.record)."""

    def __init__(self, path):
        self.path = path

    def all(self, event=None):
        lines = [json.loads(l) for l in self.path.read_text().splitlines() if l.strip()]
        return [e for e in lines if event is None or e["event"] == event]

    def wait_for(self, event, timeout=20, count=1, **match):
        def found():
            hits = [e for e in self.all(event) if all(e.get(k) == v for k, v in match.items())]
            return hits if len(hits) >= count else None

        return wait_until(found, timeout, f"{count} x {event} {match or ''}")


class WorkerProcess:
    def __init__(self, proc, name, log_path):
        self.proc = proc
        self.name = name
        self.log_path = log_path

    @property
    def pid(self):
        return self.proc.pid

    def signal(self, sig):
        self.proc.send_signal(sig)

    def log(self):
        return Path(self.log_path).read_text(errors="replace")[-5000:]


def a_run_survives(tasks, events, replace_broker):
    """Start ``demo.sleeper`` (2 s), call ``replace_broker()`` (kill the broker,
    start one on the same data) while it runs, and check that its outcome is
    accepted from its first attempt: the worker kept the run (Hello.held)."""
    r = tasks.sleeper.delay(2, "r")
    events.wait_for("sleeper_start", tag="r")
    replace_broker()
    assert r.get(timeout=30) == "r"
    assert r.info().steps[0].attempts == 1
    return r
