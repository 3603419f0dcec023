"""Prefetch: a worker holds `concurrency + prefetch` assignments, runs
`concurrency` of them at once, starts the rest in order as slots free, and a
prefetched run that is cancelled never starts.

Each test runs twice: with the demo app, whose `async def` tasks make
prefetched runs wait in the worker's session loop, and with its plain
functions alone (`demo_app:plain_app`), whose prefetched runs wait in the
thread pool's queue."""

import time

import pytest

from baton import ChainCancelled


APPS = pytest.mark.parametrize("app", ["demo_app:app", "demo_app:plain_app"])


def _held(broker, name):
    (w,) = [w for w in broker.workers() if w.worker_name == name]
    return w


@APPS
def test_prefetched_runs_wait_for_a_slot_and_start_in_order(broker, tasks, start_worker, events, app):
    worker = start_worker(concurrency=1, args=("--prefetch", "2", "--app", app))
    results = [tasks.sleeper.delay(0.5, f"s{i}") for i in range(5)]
    events.wait_for("sleeper_start", tag="s0")

    # The broker sent the window (1 running + 2 prefetched) and no more.
    info = _held(broker, worker.name)
    assert (info.concurrency, info.prefetch) == (1, 2)
    time.sleep(0.2)
    assert len(_held(broker, worker.name).in_flight) == 3
    assert [e["tag"] for e in events.all("sleeper_start")] == ["s0"], "one at a time"

    assert [r.get(timeout=30) for r in results] == [f"s{i}" for i in range(5)]
    starts = [e["tag"] for e in events.all("sleeper_start")]
    assert starts == [f"s{i}" for i in range(5)], "prefetched runs start in assignment order"
    # Never two at once: each start comes after the previous end.
    timeline = [(e["event"], e["tag"]) for e in events.all() if e["event"] in ("sleeper_start", "sleeper_end")]
    for i in range(4):
        assert timeline.index(("sleeper_end", f"s{i}")) < timeline.index(("sleeper_start", f"s{i + 1}"))


@APPS
def test_a_cancelled_prefetched_run_never_starts(broker, tasks, start_worker, events, app):
    worker = start_worker(concurrency=1, args=("--prefetch", "1", "--app", app))
    running = tasks.sleeper.delay(60, "running")
    events.wait_for("sleeper_start", tag="running")
    waiting = tasks.sleeper.delay(60, "waiting")

    def prefetched():
        return len(_held(broker, worker.name).in_flight) == 2

    deadline = time.monotonic() + 10
    while not prefetched():
        assert time.monotonic() < deadline, "the second run was not prefetched"
        time.sleep(0.05)
    waiting.cancel("not needed")
    with pytest.raises(ChainCancelled):
        waiting.get(timeout=10)
    running.cancel()
    with pytest.raises(ChainCancelled):
        running.get(timeout=10)
    # The slot is free again, and the cancelled run never started.
    assert tasks.fast.delay(7).get(timeout=30) == "fast 7"
    assert [e["tag"] for e in events.all("sleeper_start")] == ["running"]


def test_prefetch_beyond_the_brokers_limit_is_refused(tasks, start_worker):
    worker = start_worker(concurrency=2, wait=False, args=("--prefetch", "100000"))
    assert worker.proc.wait(30) != 0
    assert "hello.prefetch is 100000" in worker.log()


@APPS
def test_a_long_run_in_every_slot_gives_its_waiting_tasks_to_another_worker(broker, tasks, start_worker, events, app):
    busy = start_worker(concurrency=1, args=("--prefetch", "2", "--app", app))
    long = tasks.sleeper.delay(30, "long")
    events.wait_for("sleeper_start", tag="long")
    shorts = [tasks.sleeper.delay(0.1, f"short{i}") for i in range(2)]

    def held():
        return len(_held(broker, busy.name).in_flight)

    deadline = time.monotonic() + 10
    while held() != 3:
        assert time.monotonic() < deadline, "the short tasks were not prefetched"
        time.sleep(0.05)
    # The only slot has run a body for longer than LONG_RUN (1 s): the worker
    # closes its window and gives the short tasks back.
    deadline = time.monotonic() + 10
    while held() != 1:
        assert time.monotonic() < deadline, "the waiting tasks were not given back"
        time.sleep(0.05)
    assert _held(broker, busy.name).prefetch == 0, "the window is closed while the long run holds the slot"
    # A worker that connects now runs them at once, long before the long run ends.
    idle = start_worker(concurrency=1, args=("--prefetch", "0", "--app", app))
    assert [r.get(timeout=20) for r in shorts] == ["short0", "short1"]
    starts = {e["tag"]: e for e in events.all("sleeper_start")}
    # Not where the long one runs (the busy worker's only thread or child):
    # at the idle worker (`idle`, or its pool's child with --pool processes).
    assert starts["long"]["pid"] not in (starts["short0"]["pid"], starts["short1"]["pid"])
    assert idle.proc.poll() is None
    ended = [e["tag"] for e in events.all("sleeper_end")]
    assert "long" not in ended, "the shorts ran while the long one still held its slot"
    # The long run ends: its slot takes work again, but the window stays
    # closed while the runs are long ...
    long.cancel()
    idle.proc.terminate()
    idle.proc.wait(10)
    assert tasks.sleeper.delay(1.5, "long2").get(timeout=20) == "long2"
    assert _held(broker, busy.name).prefetch == 0, "a window behind a long run holds tasks back"
    # ... and opens again once a short one ran.
    assert tasks.sleeper.delay(0.01, "short2").get(timeout=20) == "short2"
    deadline = time.monotonic() + 10
    while _held(broker, busy.name).prefetch != 2:
        assert time.monotonic() < deadline, "the window did not open again"
        time.sleep(0.05)


def test_the_default_window_grows_while_runs_are_short_and_goes_back_with_longer_ones(broker, tasks, start_worker):
    worker = start_worker(concurrency=2, args=("--app", "demo_app:plain_app"))
    assert _held(broker, worker.name).prefetch == 14, "it starts at 7 x concurrency"
    grown = 14
    results = []
    deadline = time.monotonic() + 60
    while grown == 14:
        assert time.monotonic() < deadline, "the window did not grow under short tasks"
        results += [tasks.fast.delay(i) for i in range(len(results), len(results) + 500)]
        grown = _held(broker, worker.name).prefetch
    assert 14 < grown <= 62, "at most 31 x concurrency"
    assert [r.get(timeout=60) for r in results] == [f"fast {i}" for i in range(len(results))]

    # 50 ms runs: 40 a second, nowhere near a window of 14 per 20 ms.
    longer = [tasks.sleeper.delay(0.05, f"s{i}") for i in range(30)]
    deadline = time.monotonic() + 30
    while _held(broker, worker.name).prefetch != 14:
        assert time.monotonic() < deadline, "the window did not go back to its floor"
        time.sleep(0.05)
    assert [r.get(timeout=60) for r in longer] == [f"s{i}" for i in range(30)]


def test_a_fixed_prefetch_does_not_move(broker, tasks, start_worker):
    worker = start_worker(concurrency=2, args=("--prefetch", "14", "--app", "demo_app:plain_app"))
    results = [tasks.fast.delay(i) for i in range(3000)]
    assert [r.get(timeout=60) for r in results] == [f"fast {i}" for i in range(3000)]
    assert _held(broker, worker.name).prefetch == 14
