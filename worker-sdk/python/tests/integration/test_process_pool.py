"""``--pool processes``: bodies in child processes, with the thread pool's semantics.

What a user relies on: the body runs in another process than the worker, its
outcome (result, failure, retry-later) reaches the broker as from a thread,
``with throttle(...)`` in a body still waits for the broker's grant, a cancel
reaches the body, and a child that dies takes only its run with it: the run
is lost and runs again, and the worker goes on.
"""

import os
import signal
import time

import pytest

from baton import ChainCancelled, ChainFailed, chain
from baton_harness import wait_until

POOL = ("--pool", "processes")


def test_bodies_run_in_child_processes_and_report_every_outcome(tasks, start_worker):
    worker = start_worker(concurrency=2, args=POOL)
    pids = {r.get(timeout=30) for r in [tasks.pid.delay() for _ in range(20)]}
    assert worker.pid not in pids and 1 <= len(pids) <= 2
    assert tasks.add.delay(2, 3).get(timeout=30) == 5
    # A body that submits a chain (from the child, on a connection of its own).
    assert tasks.app.AsyncResult(tasks.demo.delay(6).get(timeout=30)).get(timeout=30) == "fast 6"
    assert tasks.poll.delay(2).get(timeout=30) == 2  # retry-later, twice
    assert tasks.flaky.delay(1).get(timeout=30) == 2  # a retried failure
    with pytest.raises(ChainFailed) as failed:
        tasks.boom.delay(7).get(timeout=30)
    assert failed.value.record["error_type"] == "ValueError"
    assert "backend refused 7" in failed.value.record["traceback"]


def test_a_crashed_child_is_a_lost_run_that_runs_again(tasks, start_worker, events, broker):
    worker = start_worker(concurrency=1, args=POOL)
    r = chain(tasks.crash_first.si("c"), tasks.fast.si(8)).delay()
    assert r.get(timeout=broker.lease_ms / 1000 * 3 + 30) == "fast 8"
    assert [e["attempt"] for e in events.all("crash_first")] == [1, 2]
    assert r.info().steps[0].attempts == 2
    assert worker.proc.poll() is None  # the worker went on, with a new child
    assert tasks.fast.delay(9).get(timeout=30) == "fast 9"


def test_a_child_killed_from_outside_is_replaced(tasks, start_worker, events):
    worker = start_worker(concurrency=1, args=POOL)
    r = tasks.sleeper.delay(3, "k")
    (started,) = events.wait_for("sleeper_start", tag="k")
    assert started["pid"] != worker.pid
    os.kill(started["pid"], signal.SIGKILL)
    assert tasks.fast.delay(4).get(timeout=30) == "fast 4"  # not a hung worker
    assert r.get(timeout=60) == "k"  # lost, assigned again, then it ran to its end
    assert r.info().steps[0].attempts == 2
    assert [e["pid"] != started["pid"] for e in events.all("sleeper_end")] == [True]


def test_cancel_reaches_a_body_in_a_child(tasks, start_worker, events):
    start_worker(concurrency=1, args=POOL)
    r = tasks.sleeper.delay(60, "t")
    events.wait_for("sleeper_start", tag="t")
    r.cancel("stop it")
    events.wait_for("sleeper_cancelled", tag="t", timeout=10)
    with pytest.raises(ChainCancelled):
        r.get(timeout=10)
    assert tasks.fast.delay(3).get(timeout=30) == "fast 3"


def test_in_body_throttle_holds_across_children(tasks, start_worker, events):
    """Two children, one key: the second body waits for the first to leave the block."""
    start_worker(concurrency=2, args=POOL)
    results = [tasks.slow.delay(11), tasks.slow.delay(11)]
    assert [r.get(timeout=30) for r in results] == [11, 11]
    spans = sorted(
        (s["t"], e["t"])
        for s, e in zip(events.all("slow_start"), events.all("slow_end"))
    )
    assert len({s["pid"] for s in events.all("slow_start")}) == 2, "both children ran one"
    assert spans[0][1] <= spans[1][0], f"the throttled blocks overlapped: {spans}"


def test_cancel_wakes_a_child_waiting_for_a_throttle_slot(tasks, start_worker, events):
    start_worker(concurrency=2, args=POOL)
    first = tasks.slow.delay(12)
    events.wait_for("slow_start", uuid=12)
    second = tasks.slow.delay(12)
    time.sleep(0.3)  # its body is waiting for the grant
    second.cancel()
    with pytest.raises(ChainCancelled):
        second.get(timeout=10)
    assert first.get(timeout=30) == 12
    assert len(events.all("slow_start")) == 1


def test_cpu_bound_bodies_run_side_by_side(tasks, start_worker):
    """Two CPU-bound bodies on 2 children run at once, in two processes.

    No GIL is shared, so they run in parallel; that is what the pool is for.
    How much faster that is on this machine is a benchmark's question
    (docs/benchmarks.md, "CPU-bound tasks"), not a test's: a busy machine
    may not give the two children two cores at the same moment.
    """
    worker = start_worker(concurrency=2, args=POOL)
    tasks.spin.delay(10).get(timeout=30)  # both children are up
    n = 2_000_000
    spans = [r.get(timeout=120) for r in [tasks.spin_span.delay(n) for _ in range(2)]]
    (pid_a, start_a, end_a), (pid_b, start_b, end_b) = spans
    assert worker.pid not in (pid_a, pid_b)
    assert pid_a != pid_b, "both bodies ran in one child"
    assert start_a < end_b and start_b < end_a, ("one body waited for the other", spans)


def test_sigterm_drains_a_process_pool(tasks, start_worker, events, broker):
    worker = start_worker(concurrency=1, args=POOL)
    running = tasks.sleeper.delay(1.0, "d")
    events.wait_for("sleeper_start", tag="d")
    worker.signal(signal.SIGTERM)
    assert worker.proc.wait(30) == 0
    assert running.get(timeout=10) == "d"
    wait_until(lambda: not broker.workers(), 10, "the worker to leave")
