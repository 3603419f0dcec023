"""Retries, retry-later polling, failure records with Python tracebacks, results and context."""

import pytest

from baton import ChainFailed, chain


def test_retryable_failure_is_retried_within_max_retries(tasks, start_worker):
    start_worker()
    r = tasks.flaky.delay(2)  # fails twice, max_retries=3
    assert r.get(timeout=30) == 3
    step = r.info().steps[0]
    assert (step.attempts, step.retries) == (3, 2)


def test_exhausted_retries_fail_the_chain(tasks, start_worker):
    start_worker()
    r = tasks.flaky.delay(10)
    with pytest.raises(ChainFailed) as failed:
        r.get(timeout=30)
    record = failed.value.record
    assert record["error_type"] == "ConnectionError"
    assert record["attempt"] == 4  # the first run and three retries
    assert "backend unreachable on attempt 4" in record["message"]


def test_plain_exception_is_not_retried_by_default(tasks, start_worker):
    start_worker()
    r = tasks.boom.delay(1)
    with pytest.raises(ChainFailed):
        r.get(timeout=30)
    assert r.info().steps[0].attempts == 1
    assert r.status() == "FAILED"


def test_fatal_is_never_retried(tasks, start_worker):
    start_worker()
    r = tasks.fatal.delay()
    with pytest.raises(ChainFailed) as failed:
        r.get(timeout=30)
    assert failed.value.error_type == "Fatal"
    assert r.info().steps[0].attempts == 1


def test_retry_later_polls_until_ready(tasks, start_worker, events):
    start_worker()
    r = tasks.poll.delay(3)
    assert r.get(timeout=30) == 3
    assert r.info().steps[0].polls == 3
    assert [e["polls"] for e in events.all("poll")] == [0, 1, 2, 3]


def test_poll_budget_exhausted(tasks, start_worker):
    start_worker()
    r = tasks.poll.apply_async(args=[100], max_polls=2)
    with pytest.raises(ChainFailed) as failed:
        r.get(timeout=30)
    assert failed.value.error_type == "PollBudgetExhausted"


def test_on_failure_gets_the_record_with_the_python_traceback(tasks, start_worker, events):
    start_worker(concurrency=2)
    r = chain(tasks.fast.si(7), tasks.boom.si(7)).apply_async(
        on_success=tasks.set_ok.si(7), on_failure=tasks.set_erred.s(7)
    )
    with pytest.raises(ChainFailed) as failed:
        r.get(timeout=30)
    record = failed.value.record
    assert record["chain_id"] == r.id
    assert record["phase"] == "main"
    assert record["step_index"] == 1
    assert record["task_name"] == "demo.boom"
    assert record["task_id"] == r.info().steps[1].task_id
    assert record["attempt"] == 1
    assert record["error_type"] == "ValueError"
    assert record["message"] == "backend refused 7"
    assert "Traceback (most recent call last)" in record["traceback"]
    assert 'raise ValueError(f"backend refused {uuid}")' in record["traceback"]

    (erred,) = events.wait_for("set_erred")
    assert erred["uuid"] == 7
    assert erred["failure"] == record  # what on_failure received, first argument
    assert events.all("set_ok") == []


def test_on_success_runs_after_the_last_step(tasks, start_worker, events):
    start_worker()
    r = chain(tasks.fast.si(1), tasks.fast.si(2)).apply_async(
        on_success=tasks.set_ok.si(1), on_failure=tasks.set_erred.s(1)
    )
    assert r.get(timeout=30) == "fast 2"
    events.wait_for("set_ok", uuid=1)
    assert events.all("set_erred") == []


def test_mutable_step_receives_the_previous_result(tasks, start_worker):
    start_worker()
    assert chain(tasks.add.si(1, 2), tasks.add.s(10), tasks.add.s(100)).delay().get(timeout=30) == 113


def test_task_sees_its_context(tasks, start_worker):
    start_worker()
    r = chain(tasks.whoami.si(), tasks.whoami.s()).apply_async(context={"user": "alice", "request": "r1"})
    out = r.get(timeout=30)
    assert out["chain_id"] == r.id
    assert out["context"] == {"user": "alice", "request": "r1"}
    assert (out["phase"], out["step_index"], out["attempt"], out["name"]) == ("main", 1, 1, "demo.whoami")
    assert out["args"][0]["step_index"] == 0  # the previous step's result


def test_idempotency_key_returns_the_first_chain(tasks, start_worker):
    start_worker()
    first = tasks.fast.apply_async(args=[1], idempotency_key="create-vm-1")
    again = tasks.fast.apply_async(args=[1], idempotency_key="create-vm-1")
    assert again.id == first.id and again.dedup == "idempotency_key" and first.dedup is None
    assert first.get(timeout=30) == "fast 1"


def test_large_results_are_omitted_from_info_and_read_by_step_result(tasks, start_worker):
    start_worker()
    size = 40_000  # over the 16 KiB that the broker keeps in a chain's record
    r = chain(tasks.big.si(0, size), tasks.big.si(1, size), tasks.big.si(2, size)).delay()
    assert r.get(timeout=30) == "2" * size
    steps = r.info().steps
    assert steps[0].result_omitted and steps[0].result == ""
    assert steps[0].result_bytes == size + 2  # the JSON string's quotes
    assert not steps[2].result_omitted  # the chain's result is shown
    for i, step in enumerate(steps):
        assert r.step_result(step.task_id) == str(i) * size
