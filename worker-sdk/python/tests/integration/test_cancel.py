"""Cancellation: running tasks are told to stop, later steps and callbacks never run."""

import pytest

from baton import ChainCancelled, chain


def test_cancel_stops_an_async_task_and_skips_the_rest(tasks, start_worker, events):
    start_worker(concurrency=2)
    r = chain(tasks.async_sleeper.si(60, "a"), tasks.fast.si(99)).apply_async(
        on_success=tasks.set_ok.si(0), on_failure=tasks.set_erred.s(0)
    )
    events.wait_for("async_start", tag="a")
    assert r.cancel("user pressed stop") == "CANCELLED"
    with pytest.raises(ChainCancelled) as cancelled:
        r.get(timeout=10)
    assert cancelled.value.reason == "user pressed stop"
    events.wait_for("async_cancelled", tag="a", timeout=10)  # the coroutine was cancelled
    assert r.status() == "CANCELLED"
    assert events.all("fast") == [] and events.all("set_ok") == [] and events.all("set_erred") == []


def test_cancel_reaches_a_thread_task(tasks, start_worker, events):
    """Threads cannot be killed: the body sees the cancellation and stops itself."""
    start_worker()
    r = tasks.sleeper.delay(60, "t")
    events.wait_for("sleeper_start", tag="t")
    r.cancel()
    events.wait_for("sleeper_cancelled", tag="t", timeout=10)
    with pytest.raises(ChainCancelled):
        r.get(timeout=10)
    # the worker's slot is free again
    assert tasks.fast.delay(3).get(timeout=30) == "fast 3"


def test_cancelling_an_ended_chain_changes_nothing(tasks, start_worker):
    start_worker()
    r = tasks.fast.delay(1)
    assert r.get(timeout=30) == "fast 1"
    assert r.cancel() == "SUCCEEDED"
