"""Pipelined submission and submit_many, against a fake client that answers when told.

The fake stands in for ``BrokerClient``: ``submit_many_future`` records a
``SubmitChains`` call and returns a future the test settles (in any order, from
any thread), so what the SDK does before, during and after the broker's
acknowledgment is observable without a broker.
"""

import logging
import threading
import time
import uuid

import grpc
import pytest

from baton import Baton, PartialSubmission, chain, outcomes, pb
from baton._pipeline import MAX_BATCH_BYTES, UNAVAILABLE_RESENDS, Pipeline, describe
from baton.context import TaskContext
from baton.errors import BatonError, SubmissionRefused


class RpcError(grpc.RpcError):
    """What the broker's refusal looks like to the SDK: a status code and details."""

    def __init__(self, code=grpc.StatusCode.INVALID_ARGUMENT, details="steps[0].name is empty"):
        super().__init__(details)
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details


class Call:
    """A ``SubmitChains`` call the pipeline started: the part of ``grpc.Future`` it uses."""

    def __init__(self, requests):
        self.requests = list(requests)
        self.ids = [r.chain_id for r in self.requests]
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

    def answer(self, dedup=pb.DEDUP_UNSPECIFIED, count=None):
        chains = [pb.SubmitChainResponse(chain_id=i, dedup=dedup) for i in self.ids[:count]]
        self._settle(pb.SubmitChainsResponse(chains=chains), None)

    def fail(self, error=None):
        self._settle(None, error or RpcError())

    @property
    def done(self):
        return self._outcome is not None

    def _settle(self, response, error):
        assert self._outcome is None, "answered twice"
        self._outcome = (response, error)
        for fn in self._callbacks:
            fn(self)


class FakeClient:
    timeout = 5.0
    current = "fake:7070"

    def __init__(self, refuse_batch=None):
        self.calls = []
        self.blocking = []
        self.batches = []
        self.refuse_batch = refuse_batch

    def submit_many_future(self, requests, address="fake:7070"):
        call = Call(requests)
        self.calls.append(call)
        return call

    def submit(self, request):
        self.blocking.append(request)
        return pb.SubmitChainResponse(chain_id="first-chain", dedup=pb.DEDUP_IDEMPOTENCY_KEY)

    def submit_many(self, requests):
        self.batches.append(list(requests))
        if len(self.batches) - 1 == self.refuse_batch:
            raise RpcError(details="chains[3]: steps[0].name is empty")
        return [pb.SubmitChainResponse(chain_id=r.chain_id) for r in requests]

    def failed_at(self, address, error, since):
        return None  # one broker: no other address to try

    def succeeded(self, address):
        pass

    def close(self):
        pass


def answer_all(app):
    """Answer every call, and the calls those answers start, until none is left."""
    while True:
        waiting = [c for c in app._client.calls if not c.done]
        if not waiting:
            return
        for call in waiting:
            call.answer()


@pytest.fixture
def app():
    app = Baton("127.0.0.1:1")
    app._client = FakeClient()
    yield app
    answer_all(app)  # nothing left in flight for close()
    app.close()


@pytest.fixture
def add(app):
    @app.task(name="t.add")
    def add(x, y):
        return x + y

    return add


def sent(app):
    """The calls started so far, in order."""
    return app._client.calls


def behind_a_call_in_flight(app, add, submit):
    """``submit()``'s submissions, made while another call is in flight, then
    sent together when it is answered; returns them and their call."""
    add.delay(0, 0)
    (first,) = sent(app)
    results = submit()
    assert len(sent(app)) == 1  # queued, not sent
    first.answer()
    return results, sent(app)[-1]


def test_delay_returns_before_the_answer_with_the_id_it_sent(app, add):
    r = add.delay(1, 2)
    (call,) = sent(app)  # nothing was in flight: sent at once, alone
    assert call.ids == [r.id]
    assert str(uuid.UUID(r.id)) == r.id
    with pytest.raises(TimeoutError, match="not acknowledged"):
        r.wait_stored(timeout=0.01)
    call.answer()
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
    first, second = RpcError(details="first"), RpcError(details="second")
    results = [add.delay(i, 0) for i in range(4)]  # one alone, then three together
    sent(app)[0].fail(first)
    assert len(sent(app)[1].ids) == 3
    threading.Timer(0.1, sent(app)[1].fail, args=(second,)).start()
    with pytest.raises(grpc.RpcError) as raised:
        app.flush(timeout=5)
    assert raised.value is first
    app.flush()  # the failures up to now were reported (the others were logged)
    with pytest.raises(grpc.RpcError) as again:
        results[1].wait_stored(timeout=0)
    assert again.value is second


def test_flush_raises_the_earliest_failure_not_the_first_to_arrive(app, add):
    """A refused chain fails before the chains sent ahead of it, which go again."""
    results, call = behind_a_call_in_flight(app, add, lambda: [add.delay(i, 0) for i in range(1, 6)])
    call.fail(RpcError(details="chains[3]: steps[0].name is empty"))  # results[3]
    taken = RpcError(grpc.StatusCode.ALREADY_EXISTS, "chains[0]: chain_id x is taken by another client's chain")
    sent(app)[-1].fail(taken)  # results[0], sent earlier
    sent(app)[-1].answer()
    with pytest.raises(grpc.RpcError) as raised:
        app.flush(timeout=5)
    assert raised.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert raised.value.details() == "chain_id x is taken by another client's chain"
    app.flush()
    assert [r.wait_stored(timeout=0).id for r in (results[1], results[2], results[4])] == sent(app)[-1].ids


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


def test_at_most_limit_chains_are_queued_or_in_flight(app, add):
    app._in_flight = Pipeline(limit=2)
    add.delay(1, 0)  # in flight
    add.delay(2, 0)  # queued behind it
    third = threading.Thread(target=add.delay, args=(3, 0))
    third.start()
    third.join(0.2)
    assert third.is_alive() and len(sent(app)) == 1  # waits for room
    sent(app)[0].answer()
    third.join(5)
    assert not third.is_alive() and len(app._in_flight._in_flight) == 2


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
    answer_all(app)
    assert [i for call in sent(app) for i in call.ids] == [a.id, b.id, chosen]


def test_a_repeated_chain_id_is_reported_as_dedup(app, add):
    r = add.delay(1, 2)
    sent(app)[0].answer(dedup=pb.DEDUP_CHAIN_ID)
    assert r.dedup == "chain_id"


# -- coalescing into SubmitChains calls ------------------------------------------


def test_delays_made_while_a_call_is_in_flight_leave_together_in_order(app, add):
    results, call = behind_a_call_in_flight(app, add, lambda: [add.delay(i, 0) for i in range(1, 100)])
    assert len(sent(app)) == 2 and call.ids == [r.id for r in results]
    assert [r.steps[0].args for r in call.requests] == [f"[{i},0]" for i in range(1, 100)]
    add.delay(100, 0)  # a call is in flight: this one waits for it
    assert len(sent(app)) == 2
    call.answer()
    assert all(r.wait_stored(timeout=0).dedup is None for r in results)
    assert len(sent(app)) == 3 and len(sent(app)[2].ids) == 1


def test_a_call_holds_at_most_1000_chains_and_half_a_mib(app, add):
    app._in_flight = Pipeline(limit=3000)  # room for all: this thread answers
    results, _ = behind_a_call_in_flight(app, add, lambda: [add.delay(i, 0) for i in range(2500)])
    answer_all(app)
    assert [len(c.ids) for c in sent(app)[1:]] == [1000, 1000, 500]
    assert [i for c in sent(app)[1:] for i in c.ids] == [r.id for r in results]

    app._client.calls.clear()
    big = "x" * 100_000
    behind_a_call_in_flight(app, add, lambda: [add.delay(big, i) for i in range(12)])
    answer_all(app)
    sizes = [len(c.ids) for c in sent(app)[1:]]
    assert sizes == [5, 5, 2]
    assert all(pb.SubmitChainsRequest(chains=c.requests).ByteSize() <= MAX_BATCH_BYTES for c in sent(app))

    app._client.calls.clear()
    huge = "x" * (MAX_BATCH_BYTES + 1)
    behind_a_call_in_flight(app, add, lambda: [add.delay(1, 0), add.delay(huge, 0), add.delay(2, 0)])
    answer_all(app)
    assert [len(c.ids) for c in sent(app)[1:]] == [1, 1, 1]  # the oversize one alone; the broker judges it


def test_a_refused_chain_fails_alone_with_its_own_error_and_the_others_go_again(app, add, caplog):
    results, call = behind_a_call_in_flight(app, add, lambda: [add.delay(i, 0) for i in range(5)])
    late = add.delay(5, 0)  # queued while the call is in flight
    refusal = RpcError(details="chains[2]: steps[0].name contains control characters")
    with caplog.at_level(logging.WARNING, logger="baton.client"):
        call.fail(refusal)
    resent = sent(app)[-1]
    assert resent.ids == [r.id for r in results[:2] + results[3:]] + [late.id]  # in order, ahead of the queue
    with pytest.raises(grpc.RpcError) as raised:
        results[2].wait_stored(timeout=0)
    error = raised.value
    assert isinstance(error, SubmissionRefused) and error.cause is refusal
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "steps[0].name contains control characters"  # as SubmitChain says it
    assert describe(error) == "INVALID_ARGUMENT: steps[0].name contains control characters"
    assert f"chain {results[2].id} was not stored: {describe(error)}" in caplog.text
    with pytest.raises(TimeoutError):
        results[0].wait_stored(timeout=0)  # not stored yet: sent again
    resent.answer()
    assert all(r.wait_stored(timeout=0) for r in results[:2] + results[3:] + [late])


def test_a_chains_index_out_of_range_or_any_other_failure_fails_the_whole_call(app, add):
    for error in (RpcError(details="chains[7]: who?"), RpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "too slow")):
        app._client.calls.clear()
        results, call = behind_a_call_in_flight(app, add, lambda: [add.delay(i, 0) for i in range(3)])
        call.fail(error)
        for r in results:
            with pytest.raises(grpc.RpcError) as raised:
                r.wait_stored(timeout=0)
            assert raised.value is error
        assert len(sent(app)) == 2  # nothing sent again


def test_a_call_cut_off_by_a_lost_connection_goes_again_a_few_times(app, add):
    """UNAVAILABLE on a call in flight (the broker crashed or restarted): its
    chains may or may not be stored, so the same ids go again, in order; the
    broker answers the stored ones as repeats. After UNAVAILABLE_RESENDS
    resends the error is each chain's failure."""
    lost = RpcError(grpc.StatusCode.UNAVAILABLE, "Socket closed")
    results, call = behind_a_call_in_flight(app, add, lambda: [add.delay(i, 0) for i in range(3)])
    ids = [r.id for r in results]
    call.fail(lost)
    assert sent(app)[-1].ids == ids  # sent again at once (the call waits for the broker itself)
    sent(app)[-1].answer(dedup=pb.DEDUP_CHAIN_ID)
    assert all(r.wait_stored(timeout=0) for r in results)

    app._client.calls.clear()
    results, call = behind_a_call_in_flight(app, add, lambda: [add.delay(i, 1) for i in range(2)])
    call.fail(lost)
    for _ in range(UNAVAILABLE_RESENDS):
        sent(app)[-1].fail(lost)
    assert len(sent(app)) == 2 + UNAVAILABLE_RESENDS
    for r in results:
        with pytest.raises(grpc.RpcError) as raised:
            r.wait_stored(timeout=0)
        assert raised.value is lost


@pytest.mark.parametrize(
    "too_large",
    [
        RpcError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "the request message is 140000 bytes, over the limit of 131072 bytes per message: "
            "--max-payload (65536 bytes) plus 64 KiB for the rest of the request",
        ),
        # Brokers before the status was RESOURCE_EXHAUSTED.
        RpcError(grpc.StatusCode.OUT_OF_RANGE, "Error, decoded message length too large"),
    ],
)
def test_a_call_too_large_for_the_broker_goes_again_in_halves(app, add, too_large):
    """A broker run with a small --max-payload refuses the whole message
    (RESOURCE_EXHAUSTED naming --max-payload): the chains go again in smaller
    calls, and one too large alone fails as SubmitChain of it would."""
    results, call = behind_a_call_in_flight(app, add, lambda: [add.delay("x" * 1000, i) for i in range(8)])
    call.fail(too_large)
    assert [len(c.ids) for c in sent(app)[2:]] == [4]
    sent(app)[-1].fail(too_large)
    assert [len(c.ids) for c in sent(app)[2:]] == [4, 2]
    answer_all(app)
    assert [i for c in sent(app)[3:] for i in c.ids] == [r.id for r in results]
    alone = add.delay("x" * 5000, 0)
    sent(app)[-1].fail(too_large)
    with pytest.raises(grpc.RpcError) as raised:
        alone.wait_stored(timeout=0)
    assert raised.value is too_large


def test_an_answer_short_of_chains_fails_the_call_instead_of_hanging(app, add):
    results, call = behind_a_call_in_flight(app, add, lambda: [add.delay(i, 0) for i in range(3)])
    call.answer(count=2)
    for r in results:
        with pytest.raises(BatonError, match="answered 2 chains of a call of 3"):
            r.wait_stored(timeout=0)


def test_a_call_that_cannot_start_fails_its_chains(app, add):
    def closed(requests, address):
        raise ValueError("Cannot invoke RPC on closed channel!")

    app._client.submit_many_future = closed
    r = add.delay(1, 2)
    with pytest.raises(ValueError, match="closed channel"):
        r.wait_stored(timeout=0)
    add.delay(3, 4)
    with pytest.raises(ValueError, match="closed channel"):
        app.flush()


class AnsweringClient(FakeClient):
    """Answers each call on a timer thread, as the broker would, after ``delay`` seconds."""

    def __init__(self, delay=0.002):
        super().__init__()
        self.delay = delay
        self.lock = threading.Lock()

    def submit_many_future(self, requests, address="fake:7070"):
        with self.lock:
            call = super().submit_many_future(requests, address)
        threading.Timer(self.delay, call.answer).start()
        return call


def test_delay_from_many_threads_keeps_each_threads_order(app, add):
    app._client = AnsweringClient()
    app._in_flight = Pipeline(limit=64)  # some threads wait for room too
    per_thread = {}

    def producer(n):
        per_thread[n] = [add.delay(n, i).id for i in range(300)]

    threads = [threading.Thread(target=producer, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    app.flush(timeout=30)
    order = [i for c in app._client.calls for i in c.ids]
    assert len(order) == len(set(order)) == 1800
    position = {chain_id: at for at, chain_id in enumerate(order)}
    for ids in per_thread.values():
        assert [position[i] for i in ids] == sorted(position[i] for i in ids)
    assert len(app._client.calls) < 1800 // 2


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
    assert outcome.success.result == f'"{sent(app)[0].ids[0]}"'

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


def test_a_call_a_standby_refused_goes_to_the_broker_now_current(app, add):
    """Several brokers: a call refused by a standby (nothing stored) goes
    again where the client's rotation now points, with the same ids; when
    the rotation gives up, its chains fail with the refusal."""
    follow = [0.0, None]
    app._client.failed_at = lambda address, error, since: follow.pop(0)
    refused = RpcError(grpc.StatusCode.UNAVAILABLE, "this broker is a standby")
    refused.trailing_metadata = lambda: (("baton-standby", "1"),)
    r = add.delay(1, 2)
    sent(app)[-1].fail(refused)
    assert sent(app)[-1].ids == [r.id] and len(sent(app)) == 2
    sent(app)[-1].fail(refused)
    assert len(sent(app)) == 2  # not the UNAVAILABLE resends: the rotation said no
    with pytest.raises(grpc.RpcError) as raised:
        r.wait_stored(timeout=0)
    assert raised.value is refused
