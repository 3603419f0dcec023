"""A worker whose stream breaks starts no prefetched run until the broker
welcomes it again, and never one the broker declares lost: a broker killed
before an assignment was durable forgets it and issues the same attempt
again, so running it anyway could run it twice."""

import threading
import time
from concurrent import futures

import grpc

from baton import Baton, pb
from baton._pb import baton_pb2_grpc


def assignment(task_id, name):
    return pb.BrokerMessage(
        assignment=pb.Assignment(task=pb.TaskRef(task_id=task_id, attempt=1), name=name, args="[]",
                                 chain_id=f"c-{task_id}", phase=pb.PHASE_MAIN, queue="general")
    )


def ref(task_id):
    return pb.TaskRef(task_id=task_id, attempt=1)


class TwoSessions(baton_pb2_grpc.WorkerServicer):
    """The first session assigns a (gated), b and c, then breaks once a runs;
    the second one welcomes the worker when ``welcome_again`` is set, saying
    b is lost, and acknowledges the outcomes it reads."""

    def __init__(self, a_started):
        self.a_started = a_started
        self.sessions = 0
        self.second_hello = None
        self.welcome_again = threading.Event()
        self.outcomes = []
        self.done = threading.Event()

    def Session(self, request_iterator, context):  # noqa: N802 - the gRPC method's name
        self.sessions += 1
        hello = next(request_iterator)
        assert hello.WhichOneof("msg") == "hello"
        if self.sessions == 1:
            yield pb.BrokerMessage(welcome=pb.Welcome(worker_id="w1", lease_ms=30000, heartbeat_interval_ms=10000))
            for task_id, name in (("a", "t.gate"), ("b", "t.mark"), ("c", "t.mark")):
                yield assignment(task_id, name)
            assert self.a_started.wait(10)
            context.abort(grpc.StatusCode.UNAVAILABLE, "broker restarting")
        self.second_hello = hello.hello
        assert self.welcome_again.wait(10)
        yield pb.BrokerMessage(welcome=pb.Welcome(worker_id="w2", lease_ms=30000, heartbeat_interval_ms=10000,
                                                  kept=[ref("a"), ref("c")], lost=[ref("b")]))
        for frame in request_iterator:
            if frame.WhichOneof("msg") == "outcome":
                self.outcomes.append(frame.outcome.task.task_id)
                yield pb.BrokerMessage(outcome_ack=pb.OutcomeAck(task=frame.outcome.task, accepted=True))
                if len(self.outcomes) == 2:
                    self.done.set()


def test_a_prefetched_run_waits_for_the_broker_and_a_lost_one_never_starts():
    a_started, gate = threading.Event(), threading.Event()
    marks = []
    broker = TwoSessions(a_started)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    baton_pb2_grpc.add_WorkerServicer_to_server(broker, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    app = Baton(f"127.0.0.1:{port}")

    @app.task(name="t.gate")
    def gated():
        a_started.set()
        assert gate.wait(10)

    @app.task(name="t.mark")
    def mark():
        from baton import current_task

        marks.append(current_task().task_id)

    worker = app.worker(concurrency=1, prefetch=2, name="reconnecting")
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        assert a_started.wait(10)
        deadline = time.monotonic() + 10
        while broker.second_hello is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert broker.second_hello is not None, "the worker did not reconnect"
        assert [r.task_id for r in broker.second_hello.held] == ["a", "b", "c"]
        gate.set()  # a ends while no broker is welcomed: b and c wait
        time.sleep(0.3)
        assert marks == [], "a prefetched run started before the Welcome"
        broker.welcome_again.set()
        assert broker.done.wait(10), "the outcomes of a and c did not come"
        assert sorted(broker.outcomes) == ["a", "c"]
        assert marks == ["c"], "only the kept run starts"
    finally:
        gate.set()
        worker.stop()
        thread.join(10)
        server.stop(0)


def test_a_first_connection_that_fails_says_it_never_connected_and_where(caplog):
    """Issue 22: a worker that never reached the broker said its connection was
    "lost", and a wrong address was hard to tell from a broker restart."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"  # nothing listens there once closed
    app = Baton(address)
    app.task(name="t.noop")(lambda: None)
    worker = app.worker(concurrency=1, name="lonely")
    thread = threading.Thread(target=worker.run, daemon=True)
    with caplog.at_level("WARNING", logger="baton.worker"):
        thread.start()
        deadline = time.monotonic() + 10
        while not caplog.records and time.monotonic() < deadline:
            time.sleep(0.01)
        worker.stop()
        thread.join(10)
    assert not thread.is_alive()
    messages = [r.getMessage() for r in caplog.records]
    assert messages, "no warning within 10 s"
    assert messages[0].startswith(f"worker lonely: could not connect to the broker at {address}, never connected ("), messages
    assert not any("lost" in m for m in messages), messages
