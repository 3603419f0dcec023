"""Signatures and chains become the SubmitChain request the protocol describes."""

import json
from datetime import datetime, timedelta, timezone

import pytest

from baton import Signature, chain, pb, throttle

from sample_tasks import app, dangerous, fast, heavy, slow


def test_si_is_immutable_and_s_is_mutable():
    assert slow.si(10).to_pb().immutable is True
    assert fast.s().to_pb().immutable is False
    assert json.loads(fast.s(1, 2, k="v").to_pb().args) == [1, 2]
    assert json.loads(fast.s(1, 2, k="v").to_pb().kwargs) == {"k": "v"}


def test_empty_arguments_are_explicit_json():
    sig = fast.si().to_pb()
    assert sig.args == "[]" and sig.kwargs == "{}"


def test_declared_task_options_travel_with_the_signature():
    assert slow.si(1).to_pb().options.max_retries == 3
    assert heavy.si().to_pb().options.heavy is True
    assert dangerous.si().to_pb().options.throttle == pb.Throttle(concurrency=1, scope=pb.THROTTLE_SCOPE_TASK)


def test_signature_options_override_declared_ones_and_none_does_not():
    assert slow.si(1).set(max_retries=5).to_pb().options.max_retries == 5
    assert slow.signature([1], max_retries=None).to_pb().options.max_retries == 3


def test_set_returns_a_copy():
    sig = fast.si(1)
    later = sig.set(countdown=30)
    assert sig.options == {} and later.options == {"countdown": 30}
    assert later.to_pb().options.countdown_ms == 30000


def test_unknown_option_is_refused_at_the_call_site():
    with pytest.raises(TypeError, match="countdwon"):
        fast.si(1).set(countdwon=5)
    with pytest.raises(TypeError, match="is_heavy_task"):
        app.task(is_heavy_task=True)(lambda: None)


def test_chain_request_shape():
    request = chain(slow.si(10), fast.si(10)).to_request()
    assert [s.name for s in request.steps] == ["demo.slow", "sample_tasks.fast"]
    assert list(request.on_success) == [] and list(request.on_failure) == []
    assert request.heavy is False and request.deadline_unix_ms == 0


def test_chain_with_callbacks_and_chain_level_options():
    done, erred = fast, slow
    request = chain(slow.si(1), fast.s()).to_request(
        on_success=done.si(1),
        on_failure=erred.s(1),
        heavy=True,
        context={"user": "alice"},
        idempotency_key="k1",
        unique_key="u1",
    )
    assert [s.name for s in request.on_success] == ["sample_tasks.fast"]
    assert request.on_failure[0].immutable is False
    assert json.loads(request.on_failure[0].args) == [1]
    assert request.heavy is True
    assert dict(request.context) == {"user": "alice"}
    assert (request.idempotency_key, request.unique_key) == ("k1", "u1")


def test_callbacks_accept_chains_and_lists():
    request = chain(fast.si(1)).to_request(
        on_success=chain(fast.si(2), fast.si(3)), on_failure=[slow.si(4), fast.si(5)]
    )
    assert [json.loads(s.args) for s in request.on_success] == [[2], [3]]
    assert [json.loads(s.args) for s in request.on_failure] == [[4], [5]]


def test_nested_chains_and_pipes_flatten():
    c = chain(chain(fast.si(1), fast.si(2)), fast.si(3))
    assert len(c.steps) == 3
    assert len((fast.si(1) | fast.si(2) | slow.si(3)).steps) == 3
    assert len(chain([fast.si(1), fast.si(2)]).steps) == 2


def test_chain_countdown_delays_only_the_first_step_and_queue_applies_to_all():
    request = chain(fast.si(1), fast.si(2), fast.si(3).set(queue="own")).to_request(
        countdown=2, queue="heavy", on_success=fast.si(4)
    )
    assert [s.options.countdown_ms for s in request.steps] == [2000, 0, 0]
    assert [s.options.queue for s in request.steps] == ["heavy", "heavy", "own"]
    assert request.on_success[0].options.queue == "heavy"


def test_deadline_as_datetime_or_timedelta():
    at = datetime(2030, 1, 1, tzinfo=timezone.utc)
    assert chain(fast.si()).to_request(deadline=at).deadline_unix_ms == int(at.timestamp() * 1000)
    ms = chain(fast.si()).to_request(deadline=timedelta(seconds=60)).deadline_unix_ms
    assert abs(ms - (datetime.now(timezone.utc).timestamp() + 60) * 1000) < 5000


def test_context_must_be_strings():
    with pytest.raises(TypeError, match="context"):
        chain(fast.si()).to_request(context={"user": 1})


def test_arguments_must_be_json():
    with pytest.raises(TypeError, match="args of sample_tasks.fast"):
        fast.si(object()).to_pb()


def test_celery_friendly_values_become_strings():
    import uuid

    u = uuid.UUID(int=5)
    assert json.loads(fast.si(u).to_pb().args) == [str(u)]


def test_chain_needs_steps_and_signatures():
    with pytest.raises(ValueError):
        chain()
    with pytest.raises(TypeError):
        chain(fast)  # a task, not a signature


def test_signature_by_name_for_tasks_of_other_languages():
    sig = app.signature("rust.resize", args=[1], kwargs={"size": 2}, immutable=True, queue="rust")
    out = sig.to_pb()
    assert out.name == "rust.resize" and out.immutable and out.options.queue == "rust"
    # A name this app knows picks up the declared options.
    assert app.signature("demo.slow", [1]).to_pb().options.max_retries == 3


def test_partial_arguments_are_appended():
    sig = fast.s(1).clone([2], {"k": 3}, countdown=1)
    assert json.loads(sig.to_pb().args) == [1, 2]
    assert json.loads(sig.to_pb().kwargs) == {"k": 3}


def test_signatures_compare_by_content_and_show_celery_notation():
    assert fast.si(1) == fast.si(1) and fast.si(1) != fast.s(1)
    assert repr(slow.si(10).set(countdown=3)) == "demo.slow.si(10).set(countdown=3)"


def test_chain_scoped_shared_throttle_on_a_signature():
    t = throttle(concurrency=4, key="tenant:42", shared=True, scope="chain")
    opts = fast.si(1).set(throttle=t).to_pb().options
    assert opts.throttle == pb.Throttle(concurrency=4, key="tenant:42", shared=True, scope=pb.THROTTLE_SCOPE_CHAIN)


def test_submission_needs_an_app():
    with pytest.raises(RuntimeError, match="no Baton app"):
        chain(Signature("x.y")).apply_async()
