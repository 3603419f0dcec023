"""Pipelined delay() calls travel together as SubmitChains calls: against the real broker.

The broker is stopped (SIGSTOP) while the first call is in flight, so what
is submitted meanwhile leaves as one call when it runs again: a batch built
on purpose, with refused chains where the test puts them.
"""

import collections
import hashlib
import secrets
import signal
import uuid
from contextlib import contextmanager

import grpc
import pytest

from baton import Baton, chain, pb
from baton.errors import SubmissionRefused

BAD_NAME = "demo.bad\x01name"  # the broker refuses control characters in task names


class CallCounter(grpc.UnaryUnaryClientInterceptor):
    """Counts the unary calls a channel makes, by method."""

    def __init__(self):
        self.calls = collections.Counter()

    def intercept_unary_unary(self, continuation, details, request):
        self.calls[details.method.rsplit("/", 1)[-1]] += 1
        return continuation(details, request)


def count_calls(app):
    """Route ``app``'s calls through a :class:`CallCounter` (until ``app.close()``)."""
    counter = CallCounter()
    client = app.client
    client._open(client.current)
    raw, usable, _ = client._channels[client.current]
    channel = grpc.intercept_channel(usable, counter)
    client._channels[client.current] = (raw, channel, pb.BrokerStub(channel))
    return counter


@contextmanager
def stopped(broker):
    """The broker stopped, so that the calls in flight stay in flight."""
    broker.proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        broker.proc.send_signal(signal.SIGCONT)


def with_id(request, chain_id):
    request = pb.SubmitChainRequest.FromString(request.SerializeToString())
    request.chain_id = chain_id
    return request


def test_a_loop_of_delays_makes_few_calls(tasks):
    counter = count_calls(tasks.app)
    results = [tasks.add.delay(i, 0) for i in range(3000)]
    tasks.app.flush(timeout=60)
    assert all(r.wait_stored(timeout=0).dedup is None for r in results)
    assert counter.calls["SubmitChain"] == 0
    assert counter.calls["SubmitChains"] <= len(results) // 4, counter.calls
    assert {r.id for r in results[::300]} == {tasks.app.client.get_chain(r.id).chain_id for r in results[::300]}


def write_tokens(path, **tokens):
    """``name=(role, secret)`` -> a token file of their SHA-256."""
    lines = []
    for name, (role, secret) in tokens.items():
        lines += ["[[token]]", f'name = "{name}"', f'role = "{role}"',
                  f'sha256 = "{hashlib.sha256(secret.encode()).hexdigest()}"', ""]
    path.write_text("\n".join(lines))
    return path


def test_each_refused_chain_of_a_call_fails_as_submit_chain_would_and_the_rest_is_stored(start_broker, tmp_path):
    secret = {n: secrets.token_hex(16) for n in ("mine", "theirs", "admin")}
    path = write_tokens(tmp_path / "tokens.toml", mine=("client", secret["mine"]),
                        theirs=("client", secret["theirs"]), ops=("admin", secret["admin"]))
    broker = start_broker(args=["--tokens", str(path)], token=secret["admin"])
    theirs = Baton(broker.address, token=secret["theirs"], pipeline=False)
    app = Baton(broker.address, token=secret["mine"])
    alone = Baton(broker.address, token=secret["mine"], pipeline=False)
    try:
        add = app.signature("demo.add", (1, 2), immutable=True)
        taken = str(uuid.uuid4())
        theirs.submit(with_id(chain(add).to_request(), taken))
        bad = {  # what a SubmitChain of it alone raises, by kind
            "taken": with_id(chain(add).to_request(), taken),
            "control": chain(app.signature(BAD_NAME, immutable=True)).to_request(),
            "no steps": pb.SubmitChainRequest(),
            "long name": chain(app.signature("x" * 201, immutable=True)).to_request(),
        }
        expected = {}
        for kind, request in bad.items():
            with pytest.raises(grpc.RpcError) as raised:
                alone.submit(request)
            expected[kind] = (raised.value.code(), raised.value.details())
        assert expected["taken"][0] == grpc.StatusCode.ALREADY_EXISTS

        app.signature("demo.add", (0, 0), immutable=True).delay().wait_stored(timeout=30)  # connected
        counter = count_calls(app)
        good, refused = [], {}
        with stopped(broker):
            app.submit(chain(add).to_request())  # in flight, alone, while the broker is stopped
            for kind, request in bad.items():
                good += [add.delay() for _ in range(20)]
                refused[kind] = app.submit(request)
            good += [add.delay() for _ in range(20)]
        # Validation comes first in the broker, so "taken" is refused last, yet it was sent first.
        with pytest.raises(grpc.RpcError) as first:
            app.flush(timeout=30)
        assert (first.value.code(), first.value.details()) == expected["taken"]
        for kind, r in refused.items():
            with pytest.raises(grpc.RpcError) as raised:
                r.wait_stored(timeout=0)
            assert isinstance(raised.value, SubmissionRefused)
            assert (raised.value.code(), raised.value.details()) == expected[kind], kind
        # The call in flight, one for the 104 sent meanwhile, one more per refusal.
        assert counter.calls["SubmitChains"] == 2 + len(bad)
        for r in good:
            assert r.wait_stored(timeout=0).dedup is None
            assert app.client.get_chain(r.id).chain_id == r.id
    finally:
        for a in (app, alone, theirs):
            a.close()


def test_chains_reach_the_broker_in_the_order_of_the_delays(tasks, broker, start_worker, events):
    """A worker of concurrency 1 runs a queue in the order the broker stored
    it: the order of the delay() calls, resends after a refusal included."""
    tasks.fast.delay("warm").wait_stored(timeout=30)
    order = [f"a{i}" for i in range(40)] + [f"b{i}" for i in range(40)]
    with stopped(broker):
        results = [tasks.fast.delay("first")]
        results += [tasks.fast.delay(tag) for tag in order[:40]]
        refused = tasks.app.signature(BAD_NAME, immutable=True).delay()
        results += [tasks.fast.delay(tag) for tag in order[40:]]
    with pytest.raises(grpc.RpcError):
        refused.wait_stored(timeout=30)
    tasks.app.flush(timeout=30)
    start_worker(concurrency=1)
    events.wait_for("fast", count=2 + len(order), timeout=60)
    ran = [e["uuid"] for e in events.all("fast")]
    assert ran == ["warm", "first"] + order


def test_calls_too_large_for_a_small_max_payload_go_again_smaller(start_broker):
    """A broker run with --max-payload 64 KiB reads messages of 128 KiB at
    most: a call that is larger goes again in smaller ones, and a chain is
    refused only as it would be alone."""
    broker = start_broker(args=["--max-payload", "65536"])
    app = Baton(broker.address)
    alone = Baton(broker.address, pipeline=False)
    try:
        def sig(size, i):
            return app.signature("demo.add", ("x" * size, i), immutable=True)

        expected = {}
        for size in (70_000, 140_000):
            with pytest.raises(grpc.RpcError) as raised:
                alone.submit(chain(sig(size, 0)).to_request())
            expected[size] = raised.value.code()
        assert expected == {70_000: grpc.StatusCode.INVALID_ARGUMENT, 140_000: grpc.StatusCode.RESOURCE_EXHAUSTED}

        sig(10, 0).delay().wait_stored(timeout=30)
        with stopped(broker):
            sig(10, 1).delay()  # in flight
            good = [sig(30_000, i).delay() for i in range(10)]
            too_big = {size: sig(size, 0).delay() for size in expected}
            good += [sig(30_000, i).delay() for i in range(10)]
        for size, r in too_big.items():
            with pytest.raises(grpc.RpcError) as raised:
                r.wait_stored(timeout=30)
            assert raised.value.code() == expected[size]
        app.flush(timeout=30)
        assert all(app.client.get_chain(r.id).chain_id == r.id for r in good)
    finally:
        app.close()
        alone.close()
