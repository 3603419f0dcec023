"""Chains whose steps alternate between a Python worker and a Rust worker.

The Rust side is the repository's example worker (``examples/rust_worker.rs``,
registering ``rust.double`` and ``rust.concat``), started as a subprocess on
the test's broker. Its binary is ``$BATON_RUST_WORKER`` or
``target/debug/examples/rust_worker`` (``cargo build --example rust_worker``).
When it is missing the tests are skipped, unless ``$CI`` (or
``$BATON_REQUIRE_BROKER``) is set, which makes them fail.

Both workers append what they ran to the events file (``$BATON_TEST_EVENTS``)
with their pid, so the tests check which process ran which step. Results
cross the language boundary as JSON.
"""

import os
import signal
import subprocess
from pathlib import Path

import pytest

from baton import ChainFailed, chain, pb
from baton_harness import REPO, WorkerProcess, wait_until


def rust_worker_binary():
    path = Path(os.environ.get("BATON_RUST_WORKER") or REPO / "target" / "debug" / "examples" / "rust_worker")
    if path.is_file() and os.access(path, os.X_OK):
        return path
    message = (
        f"Rust example worker not found at {path} "
        "(build it with `cargo build --example rust_worker`, or set BATON_RUST_WORKER)"
    )
    if os.environ.get("CI") or os.environ.get("BATON_REQUIRE_BROKER"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def rust_worker(broker, events_path, tmp_path):
    """``rust_worker <broker> --name rust-worker``, listed by the broker; killed by pid at the end."""
    binary = rust_worker_binary()
    name = "rust-worker"
    log_path = tmp_path / f"{name}.log"
    env = dict(os.environ, BATON_TEST_EVENTS=str(events_path), RUST_LOG="warn")
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [str(binary), broker.address, "--name", name, "--concurrency", "2"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    worker = WorkerProcess(proc, name, log_path)
    try:
        def listed():
            if proc.poll() is not None:
                pytest.fail(f"{name} exited with {proc.returncode}:\n{worker.log()}")
            return [w for w in broker.workers() if w.worker_name == name]

        (info,) = wait_until(listed, 20, f"{name} to register")
        assert sorted(info.task_names) == ["rust.concat", "rust.double"]
        yield worker
    finally:
        if proc.poll() is None:
            proc.kill()  # only the process this test started, by its pid
            proc.wait(10)
        print(f"--- {name} (exit {proc.returncode}) ---\n{worker.log()}")


def rust(tasks, name, *args):
    """A mutable step of a task only the Rust worker defines."""
    return tasks.app.signature(name, args)


def test_python_and_rust_workers_alternate_in_one_chain(tasks, start_worker, rust_worker, events):
    python_worker = start_worker()
    r = chain(
        tasks.add.si(1, 2),  # Python: 3
        rust(tasks, "rust.double"),  # Rust: 6
        tasks.add.s(1),  # Python: 7
        rust(tasks, "rust.concat", " from rust"),  # Rust: "7 from rust"
        tasks.fast.s(),  # Python: "fast 7 from rust"
    ).apply_async(on_success=tasks.set_ok.s())  # Python, receives the result

    assert r.get(timeout=30) == "fast 7 from rust"
    info = r.info()
    assert [s.name for s in info.steps] == ["demo.add", "rust.double", "demo.add", "rust.concat", "demo.fast"]
    assert [s.result for s in info.steps] == ["3", "6", "7", '"7 from rust"', '"fast 7 from rust"']

    # The Rust steps ran in the Rust process, once each, with the previous
    # Python result as their first argument.
    (double,) = events.all("rust.double")
    assert (double["pid"], double["chain_id"], double["task_id"]) == (rust_worker.pid, r.id, info.steps[1].task_id)
    assert (double["args"], double["result"]) == ([3], 6)
    (concat,) = events.all("rust.concat")
    assert (concat["pid"], concat["chain_id"], concat["task_id"]) == (rust_worker.pid, r.id, info.steps[3].task_id)
    assert (concat["args"], concat["result"]) == ([7, " from rust"], "7 from rust")

    # The Python steps after them ran in the Python process, with the Rust
    # result; so did on_success, with the chain's result.
    (fast,) = events.all("fast")
    assert (fast["pid"], fast["task_id"], fast["uuid"]) == (python_worker.pid, info.steps[4].task_id, "7 from rust")
    (ok,) = events.wait_for("set_ok")
    assert (ok["pid"], ok["chain_id"], ok["task_id"]) == (python_worker.pid, r.id, info.on_success[0].task_id)
    assert ok["uuid"] == "fast 7 from rust"
    assert r.status() == "SUCCEEDED"

    # The example worker stops cleanly on SIGTERM (drain, goodbye).
    rust_worker.signal(signal.SIGTERM)
    assert rust_worker.proc.wait(15) == 0, rust_worker.log()


def test_a_rust_failure_reaches_the_python_on_failure_as_a_record(tasks, start_worker, rust_worker, events):
    python_worker = start_worker()
    r = chain(
        tasks.add.si(1, 2),
        rust(tasks, "rust.double"),
        tasks.app.signature("rust.double", ["not a number"], immutable=True),
        tasks.add.s(1),
    ).apply_async(on_success=tasks.set_ok.si(7), on_failure=tasks.set_erred.s(7))

    with pytest.raises(ChainFailed) as failed:
        r.get(timeout=30)
    record = failed.value.record
    assert (record["chain_id"], record["phase"], record["step_index"]) == (r.id, "main", 2)
    assert (record["task_name"], record["attempt"]) == ("rust.double", 1)
    assert record["error_type"] == "InvalidArgument"  # the Rust SDK's, for an argument of the wrong type
    assert "rust.double: argument 0" in record["message"]

    (erred,) = events.wait_for("set_erred")
    assert erred["pid"] == python_worker.pid
    assert (erred["uuid"], erred["failure"]) == (7, record)
    assert events.all("set_ok") == []
    assert [e["args"] for e in events.all("rust.double")] == [[3]]  # the failed run recorded nothing
    assert r.info().steps[3].state == pb.STEP_STATE_PENDING  # never started
