"""How a task body ends maps to the Outcome the worker reports."""

import asyncio
import json

import pytest

from baton import Cancelled, Fatal, Retry, TaskContext, current_task, outcomes
from baton.outcomes import run_async, run_sync


def ctx(**kw):
    base = dict(name="t.x", task_id="T1", attempt=2, chain_id="C1", phase="main", step_index=0,
                queue="general", context={"user": "u"})
    base.update(kw)
    return TaskContext(**base)


def test_success_is_json():
    out = run_sync(lambda a, b=0: {"sum": a + b}, ctx(), [1], {"b": 2})
    assert json.loads(out.success.result) == {"sum": 3}


def test_none_result():
    assert run_sync(lambda: None, ctx(), [], {}).success.result == "null"


def test_unencodable_result_is_a_fatal_encode_error():
    out = run_sync(lambda: object(), ctx(), [], {})
    assert out.failure.error_type == "EncodeError" and not out.failure.retryable


def boom():
    raise ValueError("disk on fire")


def test_exception_is_retryable_failure_with_traceback():
    out = run_sync(boom, ctx(), [], {})
    f = out.failure
    assert (f.error_type, f.message, f.retryable) == ("ValueError", "disk on fire", True)
    assert "in boom" in f.traceback and 'raise ValueError("disk on fire")' in f.traceback


def test_fatal_is_not_retryable_and_reports_its_cause_type():
    def body():
        try:
            int("x")
        except ValueError as exc:
            raise Fatal("bad size") from exc

    f = run_sync(body, ctx(), [], {}).failure
    assert (f.error_type, f.message, f.retryable) == ("ValueError", "bad size", False)


def test_fatal_subclass_names_itself():
    class QuotaExceeded(Fatal):
        pass

    def body():
        raise QuotaExceeded("tenant full")

    f = run_sync(body, ctx(), [], {}).failure
    assert (f.error_type, f.retryable) == ("QuotaExceeded", False)


def test_retry_is_retry_later():
    def body():
        raise Retry(after=5, message="volume not ready")

    r = run_sync(body, ctx(), [], {}).retry_later
    assert (r.delay_ms, r.message) == (5000, "volume not ready")


def test_retry_refuses_negative_delay():
    with pytest.raises(ValueError):
        Retry(after=-1)


def test_cancelled():
    def body():
        raise Cancelled("chain cancelled")

    f = run_sync(body, ctx(), [], {}).failure
    assert (f.error_type, f.retryable) == ("Cancelled", False)


def test_body_sees_its_context_and_only_during_the_run():
    seen = {}

    def body():
        c = current_task()
        seen.update(chain=c.chain_id, attempt=c.attempt, ctx=dict(c.context))

    run_sync(body, ctx(), [], {})
    assert seen == {"chain": "C1", "attempt": 2, "ctx": {"user": "u"}}
    with pytest.raises(RuntimeError):
        current_task()


def test_async_body():
    async def body(x):
        await asyncio.sleep(0)
        return current_task().task_id + x

    out = asyncio.run(run_async(body, ctx(), ["!"], {}))
    assert json.loads(out.success.result) == "T1!"


def test_async_exception():
    async def body():
        raise KeyError("k")

    out = asyncio.run(run_async(body, ctx(), [], {}))
    assert out.failure.error_type == "KeyError" and out.failure.retryable


def test_cancellation_state_is_visible_to_the_body():
    c = ctx()
    assert not c.cancelled
    c._cancel.cancel("time limit")
    assert c.cancelled and c.cancel_reason == "time limit"
    with pytest.raises(Cancelled):
        c.raise_if_cancelled()
    assert c.wait_cancelled(0.01)


def test_a_body_waiting_for_cancellation_wakes_when_cancelled():
    """The wait's event is made on first use; a cancel before or during the wait reaches it."""
    import threading

    c = ctx()
    assert not c.wait_cancelled(0.01)
    woke = []
    waiter = threading.Thread(target=lambda: woke.append(c.wait_cancelled(10)))
    waiter.start()
    c._cancel.cancel("stop")
    waiter.join(10)
    assert woke == [True]
    fresh = ctx()
    fresh._cancel.cancel("before any wait")
    assert fresh.wait_cancelled(0) and fresh.cancelled


def test_empty_arguments_decode_to_fresh_containers():
    from baton import _json

    first, second = _json.loads("[]"), _json.loads("[]")
    first.append(1)
    assert second == [] and _json.loads("{}") == {} and _json.loads("", 7) == 7
    assert _json.loads('[1, {"a": "b"}]') == [1, {"a": "b"}]


def test_cancelled_outcome_helper():
    assert outcomes.cancelled("").failure.error_type == "Cancelled"
