"""Fixtures that start the real `baton` broker and real worker processes.

* The broker binary is ``$BATON_BIN`` or ``target/debug/baton`` of this
  repository. When it is missing the integration tests are skipped, unless
  ``$BATON_REQUIRE_BROKER`` is set (CI sets it), which makes them fail.
* Each test gets its own broker on a free loopback port (found by binding
  port 0) with a temporary data directory and a short lease, so crash tests
  do not wait 30 s. Readiness is a gRPC call that succeeds, not a sleep.
* Workers are ``python -m baton worker`` subprocesses, so SIGKILL kills a real
  process by its pid. Tests end only the processes they started.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import baton
from baton_harness import HERE, LEASE_MS, Broker, Events, WorkerProcess, broker_binary, wait_until

sys.path.insert(0, str(HERE))  # demo_app and baton_harness, for this process


@pytest.fixture
def start_broker(tmp_path):
    """Factory: ``start_broker(lease_ms=..., args=..., token=..., tls=...)``
    returns a running Broker (see Broker for the security arguments)."""
    binary = broker_binary()
    brokers = []

    def start(lease_ms=LEASE_MS, **security):
        b = Broker(binary, tmp_path / f"data{len(brokers)}", tmp_path / f"broker{len(brokers)}.log", lease_ms,
                   **security)
        brokers.append(b)
        b.start()
        return b

    yield start
    for b in brokers:
        b.stop()


@pytest.fixture
def broker(start_broker):
    return start_broker()


@pytest.fixture
def events_path(tmp_path):
    path = tmp_path / "events.jsonl"
    path.touch()
    return path


@pytest.fixture
def events(events_path):
    return Events(events_path)


@pytest.fixture
def tasks(broker):
    """The demo app, pointed at this test's broker, as the submitting client."""
    import demo_app

    demo_app.app.address = broker.address
    yield demo_app
    demo_app.app.close()


@pytest.fixture
def start_worker(broker, events_path, tmp_path):
    """Factory: ``start_worker(queues=["general"], concurrency=1)`` starts
    ``python -m baton worker --app demo_app:app`` and waits until the broker
    lists it."""
    procs = []
    env = dict(os.environ)
    root = Path(baton.__file__).resolve().parent.parent
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(root), env.get("PYTHONPATH", "")])
    env["BATON_TEST_EVENTS"] = str(events_path)
    env["PYTHONUNBUFFERED"] = "1"

    def start(queues=("general",), concurrency=1, wait=True, target=None, args=(), extra_env=None,
              app="demo_app:app", broker_from_env=False):
        """``app``: the --app argument; ``broker_from_env``: give the broker's
        address as $BATON_ADDR instead of --broker."""
        name = f"w{len(procs)}-{'+'.join(queues)}"
        log_path = tmp_path / f"{name}.log"
        log = open(log_path, "ab")
        address = (target or broker).address
        where = [] if broker_from_env else ["--broker", address]
        extra_env = {**(extra_env or {}), **({"BATON_ADDR": address} if broker_from_env else {})}
        if os.environ.get("BATON_TEST_POOL") and "--pool" not in args:
            args = (*args, "--pool", os.environ["BATON_TEST_POOL"])  # every worker of the run in that pool
        proc = subprocess.Popen(
            [sys.executable, "-m", "baton", "worker", "--app", app, *where, "--queues", ",".join(queues),
             "--concurrency", str(concurrency), "--name", name, *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**env, **(extra_env or {})},
            cwd=str(HERE),
        )
        log.close()
        worker = WorkerProcess(proc, name, log_path)
        procs.append(worker)
        if wait:
            def listed():
                if proc.poll() is not None:
                    pytest.fail(f"worker {name} exited with {proc.returncode}:\n{worker.log()}")
                return any(w.worker_name == name for w in (target or broker).workers())

            wait_until(listed, 20, f"worker {name} to register")
        return worker

    yield start
    for w in procs:
        if w.proc.poll() is None:
            w.proc.kill()  # only processes this test started, by pid
            w.proc.wait(10)
        print(f"--- {w.name} (exit {w.proc.returncode}) ---\n{w.log()}")
    print(f"--- broker ---\n{broker.log()}")


def pytest_collection_modifyitems(items):
    for item in items:
        if str(item.fspath).startswith(str(HERE)):
            item.add_marker(pytest.mark.integration)
