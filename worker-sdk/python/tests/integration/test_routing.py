"""Routing isolation: heavy work never takes a slot of a worker that did not subscribe to it."""

import time

from baton import chain, pb


def step_states(result):
    return [pb.StepState.Name(s.state) for s in result.info().steps]


def test_heavy_task_waits_for_a_heavy_worker(tasks, start_worker):
    general = start_worker(queues=["general"], concurrency=2)
    r = tasks.heavy.delay(1)
    time.sleep(1.0)  # give a wrongly routed assignment time to happen
    assert r.status() == "RUNNING"
    assert step_states(r) == ["STEP_STATE_READY"]
    assert r.info().steps[0].queue == "heavy"
    heavy = start_worker(queues=["heavy"], concurrency=1)
    assert r.get(timeout=30) == heavy.pid
    assert general.proc.poll() is None


def test_chain_level_heavy_reaches_every_step(tasks, start_worker):
    """Celery applied `heavy` to the first step only; Baton to all of them."""
    general = start_worker(queues=["general"], concurrency=2)
    heavy = start_worker(queues=["heavy"], concurrency=1)
    r = chain(tasks.where.si(1), tasks.where.si(2), tasks.where.si(3)).apply_async(heavy=True)
    assert r.get(timeout=30)["pid"] == heavy.pid
    info = r.info()
    assert [s.queue for s in info.steps] == ["heavy", "heavy", "heavy"]
    assert general.proc.poll() is None


def test_explicit_queue_and_countdown(tasks, start_worker):
    start_worker(queues=["general"], concurrency=1)
    special = start_worker(queues=["special"], concurrency=1)
    t0 = time.time()
    r = tasks.where.apply_async(args=[5], countdown=1, queue="special")
    out = r.get(timeout=30)
    assert out == {"pid": special.pid, "queue": "special", "x": 5}
    assert time.time() - t0 >= 1.0
