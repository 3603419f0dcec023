"""baton.celery and baton.executors without a broker: option mapping, call shapes, refusals."""

import warnings
from types import SimpleNamespace

import pytest

from baton import Fatal, Retry, pb
from baton.celery import (
    ERRBACK_CONTEXT_KEY,
    AsyncResult,
    Celery,
    CeleryCompatWarning,
    MaxRetriesExceededError,
    Task,
    _reset_warnings,
    chain,
    chord,
    group,
    rebuild_exception,
    shared_task,
    throttle,
)
from baton.context import TaskContext, enter, leave
from baton.executors import BaseExecutor
from baton.outcomes import from_exception, is_final

UNBOUNDED = 2**32 - 1


@shared_task(name="compat.plain")
def plain(x, y=0):
    return x + y


@shared_task(bind=True, max_retries=2, default_retry_delay=7)
def polling(self, x):
    self.retry()


@shared_task(bind=True, autoretry_for=(ConnectionError,), max_retries=3, retry_backoff=True)
def flaky(self, x):
    raise ConnectionError("down")


@shared_task(bind=True)
def errback(self, failed_id, tag):
    result = self.AsyncResult(failed_id)
    return [failed_id, tag, result.state, str(result.result), result.traceback]


@shared_task(is_heavy_task=True, queue=None)
@throttle
def heavy_dangerous():
    pass


class StateTransitionTask(Task):
    def run(self, serialized_instance, state_transition=None):
        self.seen = serialized_instance
        return [serialized_instance, state_transition]


class AbstractBase(Task):
    abstract = True


@pytest.fixture
def captured(monkeypatch):
    """Submissions of the current app, captured instead of sent."""
    from baton.celery import get_current_app

    app = get_current_app()
    requests = []

    def submit(request):
        requests.append(request)
        return SimpleNamespace(id=request.chain_id, app=app)

    monkeypatch.setattr(app, "submit", submit)
    return requests


def run_as_worker(task, args, kwargs=None, **ctx):
    """Call the task as the worker does, with a TaskContext current."""
    fields = dict(name=task.name, task_id="t-1", attempt=1, chain_id="c-1", phase="main", step_index=0,
                  queue="general", context={})
    fields.update(ctx)
    token = enter(TaskContext(**fields))
    try:
        return task.fn(*args, **(kwargs or {}))
    finally:
        leave(token)


# -- options ---------------------------------------------------------------------------


def test_celery_options_become_baton_options():
    assert plain.name == "compat.plain"
    assert plain.options == {"max_polls": UNBOUNDED, "max_retries": 0}  # Celery fails at once
    assert flaky.options["max_retries"] == 3
    assert (flaky.options["retry_backoff"], flaky.options["retry_backoff_max"]) == (1, 600)
    assert polling.options["max_retries"] == 0 and polling.max_retries == 2
    assert heavy_dangerous.options["heavy"] is True
    assert heavy_dangerous.options["throttle"].concurrency == 1  # the seed's bare @throttle
    sig = heavy_dangerous.si().to_pb()
    assert sig.options.heavy and sig.options.throttle.concurrency == 1


def test_autoretry_without_backoff_uses_default_retry_delay():
    @shared_task(name="compat.constant", autoretry_for=(OSError,), default_retry_delay=5, max_retries=None)
    def constant():
        pass

    assert constant.options["retry_backoff"] == constant.options["retry_backoff_max"] == 5
    assert constant.options["max_retries"] == UNBOUNDED


def test_unhonoured_options_warn_once_saying_what_baton_does():
    _reset_warnings()
    with pytest.warns(CeleryCompatWarning, match="acks_late.*lease lapses"):
        @shared_task(name="compat.late", acks_late=True)
        def late():
            pass
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        @shared_task(name="compat.late2", acks_late=True)  # once per process
        def late2():
            pass
    with pytest.warns(CeleryCompatWarning, match="no result backend"):
        Celery("proj", backend="redis://localhost", set_as_current=False)
    with pytest.warns(CeleryCompatWarning, match="expires"):
        plain.si(1).set(expires=60)


def test_unknown_options_are_refused_or_kept_as_attributes():
    with pytest.raises(TypeError, match="countdwon"):
        plain.si(1).set(countdwon=5)
    _reset_warnings()
    with pytest.warns(CeleryCompatWarning, match="kept as an attribute"):
        @shared_task(name="compat.custom", my_flag=True)
        def custom():
            pass
    assert custom.my_flag is True


def test_group_and_chord_build_one_group_step(captured):
    group(plain.s(1), plain.s(2)).delay(0)
    step = captured[-1].steps[0]
    assert [m.args for m in step.members] == ["[0,1]", "[0,2]"]  # partials go first, as in Celery
    chord([plain.s(1), plain.s(2)])(plain.s())
    request = captured[-1]
    assert len(request.steps) == 2 and len(request.steps[0].members) == 2
    (group([plain.s(3)]) | plain.s()).apply_async(countdown=5)
    assert captured[-1].steps[0].members[0].options.countdown_ms == 5000


def test_a_chain_with_its_own_callbacks_inside_another_is_a_nested_executor(captured):
    inner = chain(plain.si(1))
    inner.link(plain.si("ok"))
    inner.link_error(errback.s("erred"))
    chain(plain.si(0), inner).delay()
    request = captured[-1]
    nested = request.steps[1].executor
    assert [s.name for s in nested.on_success] == [plain.name]
    assert [s.name for s in nested.on_failure] == [errback.name]
    # Its errback is Celery's: it is called with the failed task's id.
    assert request.context[ERRBACK_CONTEXT_KEY] == "task_id"


# -- tasks --------------------------------------------------------------------------------


def test_class_tasks_register_themselves_and_abstract_ones_do_not():
    from baton.celery import get_current_app

    tasks = get_current_app().tasks
    assert StateTransitionTask.name == "test_celery_mapping.StateTransitionTask"
    assert tasks[StateTransitionTask.name].__class__ is StateTransitionTask
    assert not any(isinstance(t, AbstractBase) and type(t) is AbstractBase for t in tasks.values())
    assert StateTransitionTask()("vol:1", state_transition="set_ok") == ["vol:1", "set_ok"]


def test_each_run_of_a_class_task_gets_its_own_copy():
    registered = StateTransitionTask.__dict__  # class attributes untouched
    task = next(t for t in __import__("baton.celery").celery.get_current_app().tasks.values()
                if type(t) is StateTransitionTask)
    assert run_as_worker(task, ["vol:2"]) == ["vol:2", None]
    assert not hasattr(task, "seen")  # state the run kept on self stayed on its copy
    assert "seen" not in registered


def test_direct_call_of_a_bound_task_has_a_blank_request():
    @shared_task(name="compat.who", bind=True)
    def who(self):
        return self.request.called_directly, self.request.id, self.request.retries

    assert who() == (True, None, 0)


def test_self_retry_is_retry_later_within_celerys_budget():
    with pytest.raises(Retry) as first:
        run_as_worker(polling, [1], polls=0)
    assert first.value.delay_ms == 7000
    with pytest.raises(Retry):
        run_as_worker(polling, [1], polls=1)
    with pytest.raises(MaxRetriesExceededError) as spent:
        run_as_worker(polling, [1], polls=1, retries=1)  # request.retries counts both
    assert is_final(spent.value)
    assert from_exception(spent.value).failure.retryable is False


def test_autoretry_for_is_a_retryable_failure_until_the_budget_is_spent():
    with pytest.raises(ConnectionError) as first:
        run_as_worker(flaky, [1], retries=2)
    assert from_exception(first.value).failure.retryable is True
    with pytest.raises(ConnectionError) as last:
        run_as_worker(flaky, [1], retries=3)
    assert from_exception(last.value).failure.retryable is False


def test_other_exceptions_fail_at_once_with_their_own_type():
    @shared_task(name="compat.bad", max_retries=5)
    def bad():
        raise ValueError("bad size")

    with pytest.raises(ValueError) as raised:
        run_as_worker(bad, [])
    failure = from_exception(raised.value).failure
    assert (failure.error_type, failure.message, failure.retryable) == ("ValueError", "bad size", False)
    assert 'raise ValueError("bad size")' in failure.traceback


def test_errback_gets_the_failed_id_and_reads_the_record():
    record = {"chain_id": "c-9", "phase": "main", "step_index": 0, "task_name": "x", "task_id": "failed-9",
              "attempt": 1, "error_type": "CinderError", "message": "quota", "traceback": "Traceback...\nboom"}
    got = run_as_worker(errback, [record, "tag"], phase="on_failure", context={ERRBACK_CONTEXT_KEY: "task_id"})
    assert got == ["failed-9", "tag", "FAILURE", "quota", "Traceback...\nboom"]
    # Baton's own form (no marker): the record itself.
    with pytest.raises(Exception):
        run_as_worker(errback, [record, "tag"], phase="on_failure")  # AsyncResult(dict) is not an id


def test_rebuilt_exceptions():
    exc = rebuild_exception({"error_type": "ValueError", "message": "bad", "traceback": "tb"})
    assert type(exc) is ValueError and str(exc) == "bad" and exc.record["traceback"] == "tb"
    remote = rebuild_exception({"error_type": "CinderError", "message": "quota"})
    assert type(remote).__name__ == "CinderError" and str(remote) == "quota"
    assert type(remote) is type(rebuild_exception({"error_type": "CinderError", "message": "other"}))


# -- signatures and submission -------------------------------------------------------------


def test_partial_arguments_go_first_and_set_changes_the_signature():
    sig = errback.s("tag")
    assert sig.clone(("failed",)).args == ("failed", "tag")
    assert sig.set(countdown=3) is sig and sig.options["countdown"] == 3
    assert sig.set(immutable=True).immutable


def test_link_error_marks_the_chain_for_the_celery_call_shape(captured):
    chain(plain.si(1), plain.s(2)).apply_async(link=plain.s(3), link_error=errback.s("x"), countdown=2,
                                                queue="special", priority=5)
    request = captured[-1]
    assert request.context[ERRBACK_CONTEXT_KEY] == "task_id"
    assert [s.name for s in request.on_success] == ["compat.plain"]
    assert request.steps[0].options.countdown_ms == 2000 and request.steps[1].options.countdown_ms == 0
    assert {s.options.queue for s in request.steps} == {"special"}  # every step, unlike Celery
    assert {s.options.priority for s in request.steps} == {5}
    plain.apply_async((1,), link_error=errback.si("failed", "x"))
    assert ERRBACK_CONTEXT_KEY not in captured[-1].context  # immutable: nothing to pass
    plain.apply_async((1,), on_failure=errback.s("x"))
    assert ERRBACK_CONTEXT_KEY not in captured[-1].context  # Baton's record-first form


def test_task_apply_async_and_delay(captured):
    result = plain.apply_async((1,), {"y": 2}, countdown=1.5, eta=None, ignore_result=True)
    step = captured[-1].steps[0]
    assert (step.args, step.kwargs, step.options.countdown_ms) == ("[1]", '{"y":2}', 1500)
    assert isinstance(result, AsyncResult) and result.id == captured[-1].chain_id
    chain(plain.si(1), plain.si(2))()
    assert len(captured[-1].steps) == 2


def test_callbacks_baton_cannot_place_are_refused(captured):
    with pytest.raises(NotImplementedError, match="only the first receives"):
        plain.apply_async((1,), link=[plain.si(1), plain.s(2)])
    step = plain.si(1)
    step.link(plain.si(9))
    with pytest.raises(NotImplementedError, match="one step of a chain"):
        chain(step, plain.si(2)).apply_async()
    with pytest.raises(TypeError, match="link= or on_success="):
        plain.apply_async((1,), link=plain.si(1), on_success=plain.si(2))
    with pytest.raises(NotImplementedError, match="Baton runs a retried step again"):
        run_as_worker(shared_task(name="compat.reargs", bind=True)(lambda self: self.retry(args=(1,))), [])


# -- throttle and executors ------------------------------------------------------------------


def test_throttle_takes_nodeconductors_call_shapes():
    assert throttle("tenant-7").key == "tenant-7"
    assert throttle(key="*").key == ""  # NodeConductor's default: the whole task name
    assert throttle(concurrency=3, key="k").concurrency == 3
    _reset_warnings()
    with pytest.warns(CeleryCompatWarning, match="without polling"):
        throttle(key="k", retry_delay=30)


class _Model:
    class _meta:  # noqa: N801
        def __str__(self):
            return "openstack.volume"

    _meta = _meta()
    pk = 7


def test_executor_hooks():
    class Create(BaseExecutor):
        is_heavy_task = True

        @classmethod
        def get_task_signature(cls, instance, serialized_instance, **kwargs):
            return plain.si(serialized_instance)

    assert Create.serialize_instance(_Model()) == "openstack.volume:7"
    assert Create.heavy(_Model())
    step = Create.as_signature(_Model()).to_pb()
    assert step.name == "Create"
    assert step.executor.steps[0].args == '["openstack.volume:7"]'
    with pytest.raises(NotImplementedError, match="get_task_signature"):
        BaseExecutor.get_task_signature(_Model(), "x")


def test_executor_submits_one_chain_with_its_callbacks(captured):
    calls = []

    class Delete(BaseExecutor):
        @classmethod
        def pre_apply(cls, instance, **kwargs):
            calls.append(("pre_apply", kwargs))

        @classmethod
        def get_task_signature(cls, instance, serialized_instance, **kwargs):
            return chain(plain.si(serialized_instance), plain.si(serialized_instance))

        @classmethod
        def get_success_signature(cls, instance, serialized_instance, **kwargs):
            return plain.si(serialized_instance)

        @classmethod
        def get_failure_signature(cls, instance, serialized_instance, force=False, **kwargs):
            return errback.s(serialized_instance)

    Delete.execute(_Model(), force=True, is_heavy_task=True)
    request = captured[-1]
    assert calls == [("pre_apply", {"force": True})]
    assert request.heavy and len(request.steps) == 2
    assert request.steps[0].options.countdown_ms == 2000  # Waldur's default countdown=2
    assert request.on_failure[0].args == '["openstack.volume:7"]'
    assert request.context[ERRBACK_CONTEXT_KEY] == "task_id"


def test_worker_cli_serves_the_shared_tasks_of_a_module():
    from baton.cli import load_app
    from baton.celery import get_current_app

    app = load_app("celery_sample")
    assert app is get_current_app()
    assert "sample.celery.echo" in app.tasks


def test_current_task_is_the_running_celery_task():
    from baton.celery import current_task

    assert not current_task

    @shared_task(name="compat.current", bind=True)
    def which(self):
        return bool(current_task), current_task.name, current_task.request.id

    assert run_as_worker(which, [], task_id="t-42") == (True, "compat.current", "t-42")


def test_rate_limit_is_the_brokers_rate_across_every_worker(captured):
    _reset_warnings()
    with pytest.warns(CeleryCompatWarning, match="across every worker"):

        @shared_task(name="compat.rated", rate_limit="10/s")
        def rated():
            pass

    rated.delay()
    rate = captured[-1].steps[0].options.throttle.rate
    assert (rate.count, rate.period_ms) == (10, 1000)
