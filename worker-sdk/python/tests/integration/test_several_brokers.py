"""Several broker addresses (issue 21, docs/deployment.md "How clients find
the leader"): the client and the worker skip a broker that is down, follow
the leader a standby names, and carry a run over to the broker that takes
over. The standby is a fake here (a gRPC server answering every Broker,
Worker and Admin call as a standby does); loopback only, every wait bounded."""

from concurrent import futures

import grpc
import pytest

from baton import Baton
from baton_harness import Broker, a_run_survives, broker_binary, free_port


class _Standby(grpc.GenericRpcHandler):
    """Refuses every method as a standby does, naming ``leader``; counts the calls by method."""

    def __init__(self, leader):
        self.leader = leader
        self.calls = []

    def service(self, handler_call_details):
        method = handler_call_details.method
        if not method.startswith(("/baton.v1.Broker/", "/baton.v1.Worker/", "/baton.v1.Admin/")):
            return None
        self.calls.append(method.rsplit("/", 1)[1])

        def refuse(requests, context):
            context.set_trailing_metadata((("baton-standby", "1"), ("baton-leader", self.leader)))
            context.abort(grpc.StatusCode.UNAVAILABLE, f"this broker is a standby; the leader is at {self.leader}")

        # Stream-stream fits every method on the wire: the request is not read.
        return grpc.stream_stream_rpc_method_handler(refuse)


@pytest.fixture
def standby(broker):
    """A fake standby on a free loopback port naming the test's broker as the leader."""
    handler = _Standby(broker.address)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=(handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    handler.address = f"127.0.0.1:{port}"
    yield handler
    server.stop(grace=None)


def test_a_broker_that_is_down_is_skipped(tasks, start_worker, broker):
    """A closed loopback port first in the list, the live broker second:
    submissions (pipelined, one by one, in a batch), reads and admin calls
    reach the live one, and so does a worker."""
    addresses = f"127.0.0.1:{free_port()},{broker.address}"
    start_worker(args=("--broker", addresses))
    tasks.app.address = addresses
    assert tasks.add.delay(1, 2).get(timeout=30) == 3
    assert tasks.app.client.current == broker.address
    blocking = Baton(addresses, pipeline=False, timeout=10)
    try:
        assert blocking.signature("demo.add", (2, 3)).delay().get(timeout=30) == 5
        results = blocking.submit_many([blocking.signature("demo.add", (i, i)) for i in range(3)])
        assert [r.get(timeout=30) for r in results] == [0, 2, 4]
        assert blocking.schedules() == []
    finally:
        blocking.close()


def test_all_brokers_down_fails_a_call_after_one_round():
    """No broker at all: a call fails as fast as with one address, not after 30 s."""
    app = Baton(f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}", pipeline=False, timeout=10)
    try:
        with pytest.raises(grpc.RpcError) as raised:
            app.signature("demo.add", (1, 2)).delay()
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        app.close()


def test_a_standby_alone_in_the_list_sends_client_and_worker_to_the_leader(tasks, start_worker, broker, standby):
    start_worker(args=("--broker", standby.address))
    assert "Session" in standby.calls, "the worker asked the standby first"
    tasks.app.address = standby.address
    assert tasks.add.delay(2, 2).get(timeout=30) == 4
    assert "SubmitChains" in standby.calls
    assert tasks.app.client.current == broker.address
    blocking = Baton(standby.address, pipeline=False, timeout=10)
    try:
        r = blocking.signature("demo.add", (3, 3)).delay()
        assert blocking.schedules() == []
        assert r.get(timeout=30) == 6
        assert blocking.client.current == broker.address
    finally:
        blocking.close()


def test_a_run_carries_over_to_the_broker_that_takes_over(tasks, start_worker, events, start_broker, tmp_path):
    """A worker given [A, B] runs a task from A; A is killed and B starts on
    the same data at its own port: the worker reconnects to B, keeps the run
    (Hello.held) and its outcome is accepted; the chain succeeds once."""
    a = start_broker(lease_ms=10000)
    b = Broker(broker_binary(), a.data_dir, tmp_path / "broker-b.log", 10000)
    addresses = f"{a.address},{b.address}"
    try:
        tasks.app.address = addresses
        start_worker(target=a, args=("--broker", addresses))
        a_run_survives(tasks, events, lambda: (a.kill(), b.start()))
        assert len(events.all("sleeper_start")) == 1 and len(events.all("sleeper_end")) == 1
        assert tasks.app.client.current == b.address
        assert tasks.fast.delay(1).get(timeout=30) == "fast 1"
    finally:
        b.stop()
        print(f"--- broker B ---\n{b.log()}")
