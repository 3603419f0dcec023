"""Process failures: SIGKILL of a worker mid-task, SIGTERM drain, broker restart."""

import os
import signal

from baton import chain, pb
from baton_harness import a_run_survives, wait_until


def test_sigkill_mid_task_redelivers_to_another_worker(tasks, start_worker, events, broker):
    first = start_worker()
    r = chain(tasks.sleeper.si(2, "k"), tasks.fast.si(5)).delay()
    (started,) = events.wait_for("sleeper_start", tag="k")
    assert started["pid"] == first.pid and started["attempt"] == 1
    os.kill(first.pid, signal.SIGKILL)
    first.proc.wait(10)
    second = start_worker()
    assert r.get(timeout=broker.lease_ms / 1000 + 30) == "fast 5"
    rerun = events.wait_for("sleeper_end", tag="k")[0]
    assert rerun["pid"] == second.pid and rerun["attempt"] == 2
    assert r.info().steps[0].attempts == 2


def test_sigterm_drains(tasks, start_worker, events, broker):
    """SIGTERM: the running task finishes and is reported, nothing new is taken,
    the worker exits 0."""
    worker = start_worker(concurrency=2)
    running = tasks.sleeper.delay(1.5, "d")
    events.wait_for("sleeper_start", tag="d")
    worker.signal(signal.SIGTERM)
    wait_until(
        lambda: any(w.worker_name == worker.name and w.draining for w in broker.workers()),
        10,
        "the broker to see the drain",
    )
    later = tasks.fast.delay(42)
    assert worker.proc.wait(30) == 0
    assert running.get(timeout=10) == "d"
    assert later.status() == "RUNNING"  # not taken by the draining worker
    assert events.all("fast") == []
    start_worker()
    assert later.get(timeout=30) == "fast 42"


def test_worker_survives_a_broker_restart(tasks, start_worker, events, start_broker):
    """The broker is killed while a task runs and restarts on the same port and
    data: the worker reconnects with backoff, keeps the run (Hello.held) and
    delivers its outcome."""
    broker = start_broker(lease_ms=10000)
    tasks.app.address = broker.address
    start_worker(target=broker)
    a_run_survives(tasks, events, lambda: (broker.kill(), broker.start()))
    assert tasks.fast.delay(1).get(timeout=30) == "fast 1"


def test_refused_hello_exits_with_status_2(start_worker):
    """A worker the broker refuses (bad queue name) exits instead of retrying forever."""
    worker = start_worker(queues=["no spaces allowed"], wait=False)
    assert worker.proc.wait(20) == 2
    assert "INVALID_ARGUMENT" in worker.log()


def test_delay_calls_cut_off_by_a_broker_crash_are_sent_again(tasks, start_broker):
    """The broker is killed while pipelined delay() calls are in flight and
    restarts on the same port and data: the cut-off calls go again (the broker
    answers chains it had stored as repeats), so every chain is stored, once."""
    broker = start_broker()
    tasks.app.address = broker.address
    results = [tasks.fast.delay(i) for i in range(3000)]  # queued; calls of up to 1000 leave
    broker.kill()
    broker.start()
    for r in results:
        assert r.wait_stored(timeout=30)
    ready = {q.name: q.ready for q in broker.admin.ListQueues(pb.ListQueuesRequest(), timeout=5).queues}
    assert ready["general"] == 3000  # none lost, none twice
