"""Pipelined submission and submit_many, against a fake client that answers when told.

The fake stands in for ``BrokerClient``: ``submit_future`` returns a future
the test settles (in any order, from any thread), so what the SDK does before,
during and after the broker's acknowledgment is observable without a broker.
"""

import logging
import threading
import time
import uuid

import grpc
import pytest

from baton import Baton, PartialSubmission, chain, outcomes, pb
from baton._pipeline import Pipeline
from baton.context import TaskContext


class RpcError(grpc.RpcError):
    """What the broker's refusal looks like to the SDK: a status code and details."""

    def __init__(self, code=grpc.StatusCode.INVALID_ARGUMENT, details="steps[0].name is empty"):
        super().__init__(details)
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details


class Future:
    """The part of ``grpc.Future`` the pipeline uses."""

    def __init__(self, request):
        self.request = request
        self._callbacks = []
        self._outcome = None

    def add_done_callback(self, fn):
        if self._outcome is None:
            self._callbacks.append(fn)
        else:
            fn(self)

    def result(self):
        response, error = self._outcome
        if error is not None:
            raise error
        return response

    def answer(self, dedup=pb.DEDUP_UNSPECIFIED):
        self._settle(pb.SubmitChainResponse(chain_id=self.request.chain_id, dedup=dedup), None)

    def fail(self, error=None):
        self._settle(None, error or RpcError())

    def _settle(self, response, error):
        self._outcome = (response, error)
        for fn in self._callbacks:
            fn(self)


class FakeClient:
    timeout = 5.0

    def __init__(self, refuse_batch=None):
        self.futures = []
        self.blocking = []
        self.batches = []
        self.refuse_batch = refuse_batch

    def submit_future(self, request):
        future = Future(request)
        self.futures.append(future)
        return future

    def submit(self, request):
        self.blocking.append(request)
        return pb.SubmitChainResponse(chain_id="first-chain", dedup=pb.DEDUP_IDEMPOTENCY_KEY)

    def submit_many(self, requests):
        self.batches.append(list(requests))
        if len(self.batches) - 1 == self.refuse_batch:
            raise RpcError(details="chains[3]: steps[0].name is empty")
        return [pb.SubmitChainResponse(chain_id=r.chain_id) for r in requests]

    def close(self):
        pass


@pytest.fixture
def app():
    app = Baton("127.0.0.1:1")
    app._client = FakeClient()
    yield app
    for future in app._client.futures:  # nothing left in flight for close()
        if future._outcome is None:
            future.answer()
    app.close()


@pytest.fixture
def add(app):
    @app.task(name="t.add")
    def add(x, y):
        return x + y

    return add


def sent(app):
    return app._client.futures


def test_delay_returns_before_the_answer_with_the_id_it_sent(app, add):
    r = add.delay(1, 2)
    (future,) = sent(app)
    assert r.id == future.request.chain_id
    assert str(uuid.UUID(r.id, version=4)) == r.id
    with pytest.raises(TimeoutError, match="not acknowledged"):
        r.wait_stored(timeout=0.01)
    future.answer()
    assert r.wait_stored(timeout=0) is r
    assert r.dedup is None


def test_every_submission_gets_a_new_id(app, add):
    ids = {add.delay(i, 0).id for i in range(50)}
    assert len(ids) == 50


def test_wait_stored_blocks_until_the_answer_arrives(app, add):
    r = add.delay(1, 2)
    threading.Timer(0.1, sent(app)[0].answer).start()
    started = time.monotonic()
    r.wait_stored(timeout=5)
    assert time.monotonic() - started >= 0.09


def test_a_refused_submission_raises_from_every_method(app, add):
    r = add.delay(1, 2)
    error = RpcError()
    sent(app)[0].fail(error)
    # Each raises the refusal before making a call of its own (the fake has none).
    for call in (r.wait_stored, r.get, r.status, r.info, r.cancel, r.ready, lambda: r.dedup):
        with pytest.raises(grpc.RpcError) as raised:
            call()
        assert raised.value is error


def test_a_failure_nobody_waits_for_is_logged(app, add, caplog):
    r = add.delay(1, 2)
    with caplog.at_level(logging.WARNING, logger="baton.client"):
        sent(app)[0].fail(RpcError(details="steps[0].name contains control characters"))
    assert f"chain {r.id} was not stored: INVALID_ARGUMENT: steps[0].name contains control characters" in caplog.text


def test_a_failure_someone_waits_for_is_raised_not_logged(app, add, caplog):
    r = add.delay(1, 2)
    threading.Timer(0.1, sent(app)[0].fail).start()
    with caplog.at_level(logging.WARNING, logger="baton.client"), pytest.raises(grpc.RpcError):
        r.wait_stored(timeout=5)
    assert caplog.text == ""


def test_flush_raises_the_earliest_unseen_failure_once(app, add):
    results = [add.delay(i, 0) for i in range(4)]
    first, second = RpcError(details="first"), RpcError(details="second")
    futures = sent(app)
    futures[3].fail(second)  # answered first, sent last
    futures[0].answer()
    futures[1].fail(first)
    threading.Timer(0.1, futures[2].answer).start()
    with pytest.raises(grpc.RpcError) as raised:
        app.flush(timeout=5)
    assert raised.value is first
    app.flush()  # the failures up to now were reported (the others were logged)
    assert results[2].wait_stored(timeout=0).dedup is None


def test_flush_skips_failures_already_raised_by_wait_stored(app, add):
    r = add.delay(1, 2)
    sent(app)[0].fail()
    with pytest.raises(grpc.RpcError):
        r.wait_stored()
    app.flush()


def test_flush_times_out_while_answers_are_missing(app, add):
    add.delay(1, 2)
    with pytest.raises(TimeoutError, match="1 submission"):
        app.flush(timeout=0.05)


def test_at_most_limit_submissions_are_in_flight(app, add):
    app._in_flight = Pipeline(limit=2)
    add.delay(1, 0)
    add.delay(2, 0)
    third = threading.Thread(target=add.delay, args=(3, 0))
    third.start()
    third.join(0.2)
    assert third.is_alive() and len(sent(app)) == 2  # waits for a slot
    sent(app)[0].answer()
    third.join(5)
    assert not third.is_alive() and len(sent(app)) == 3


def test_keys_and_pipeline_false_submit_synchronously(app, add):
    r = add.apply_async(args=[1, 2], idempotency_key="k")
    assert (r.id, r.dedup) == ("first-chain", "idempotency_key")
    add.apply_async(args=[1, 2], unique_key="u")
    app.pipeline = False
    add.delay(1, 2)
    assert len(app._client.blocking) == 3 and sent(app) == []
    assert all(request.chain_id for request in app._client.blocking)


def test_submit_copies_a_request_without_an_id_and_keeps_a_given_one(app, add):
    request = chain(add.si(1, 2)).to_request()
    a, b = app.submit(request), app.submit(request)
    assert request.chain_id == "" and a.id != b.id
    request.chain_id = chosen = str(uuid.uuid4())
    assert app.submit(request).id == chosen
    assert [f.request.chain_id for f in sent(app)] == [a.id, b.id, chosen]


def test_a_repeated_chain_id_is_reported_as_dedup(app, add):
    r = add.delay(1, 2)
    sent(app)[0].answer(dedup=pb.DEDUP_CHAIN_ID)
    assert r.dedup == "chain_id"


def run_in_worker(body):
    """Run ``body`` as a worker runs a plain task, returning its Outcome."""
    ctx = TaskContext(name="t.parent", task_id="t1", attempt=1, chain_id="c", phase="main", step_index=0,
                      queue="general", context={})
    return outcomes.run_sync(body, ctx, [], {})


def test_a_task_body_returns_only_once_its_submissions_are_stored(app, add):
    """A step that submits a chain and returns its id must hand on a stored chain."""

    def body():
        return add.delay(1, 2).id

    threading.Timer(0.1, lambda: sent(app)[0].answer()).start()
    started = time.monotonic()
    outcome = run_in_worker(body)
    assert time.monotonic() - started >= 0.09
    assert outcome.success.result == f'"{sent(app)[0].request.chain_id}"'

    # A refused submission fails the run, as when delay() raised in the body.
    threading.Timer(0.1, lambda: sent(app)[1].fail()).start()
    outcome = run_in_worker(body)
    assert outcome.failure.retryable and outcome.failure.message == "steps[0].name is empty"


def test_submit_many_sends_batches_of_1000_in_order(app, add):
    items = [add.si(i, 0) for i in range(2500)]
    results = app.submit_many(items, queue="q")
    batches = app._client.batches
    assert [len(b) for b in batches] == [1000, 1000, 500]
    sent_ids = [r.chain_id for b in batches for r in b]
    assert [r.id for r in results] == sent_ids and len(set(sent_ids)) == 2500
    assert batches[2][499].steps[0].args == "[2499,0]" and batches[0][0].steps[0].options.queue == "q"
    assert app.submit_many([]) == [] and len(batches) == 3


def test_submit_many_takes_chains_and_refuses_other_things(app, add):
    (r,) = app.submit_many([chain(add.si(1, 2), add.s(3))])
    assert len(app._client.batches[0][0].steps) == 2 and r.dedup is None
    with pytest.raises(TypeError, match="signatures and chains"):
        app.submit_many([add])


def test_submit_many_closes_a_batch_before_1_mib(app, add):
    big = "x" * 100_000
    app.submit_many([add.si(big, i) for i in range(25)])
    sizes = [len(b) for b in app._client.batches]
    assert sum(sizes) == 25 and max(sizes) <= 10


def test_submit_many_first_batch_refused_raises_the_broker_error(app, add):
    app._client.refuse_batch = 0
    with pytest.raises(RpcError, match="chains\\[3\\]"):
        app.submit_many([add.si(i, 0) for i in range(5)])


def test_submit_many_later_batch_refused_names_what_was_stored(app, add):
    app._client.refuse_batch = 1
    with pytest.raises(grpc.RpcError) as raised:
        app.submit_many([add.si(i, 0) for i in range(1500)])
    error = raised.value
    assert isinstance(error, PartialSubmission)
    assert len(error.stored) == 1000 and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert str(error).startswith("1000 of 1500 chains stored; the batch from item 1000 was refused")
