"""Batches on the worker's stream: how the outbox packs frames, and a worker
against a scripted broker (an in-process gRPC server) that sends and expects
``BrokerBatch`` / ``WorkerBatch`` frames."""

import asyncio
import collections
import threading
import time
from concurrent import futures

import grpc
import pytest

import baton.worker
from baton import Baton, current_task, pb
from baton._pb import baton_pb2_grpc
from baton.worker import READ_BATCH_BYTES, _Outbox, _take_frame, _Traffic


def outcome(i, result="x"):
    return pb.WorkerMessage(
        outcome=pb.Outcome(task=pb.TaskRef(task_id=f"t{i}", attempt=1), success=pb.Success(result=result))
    )


def frames_of(messages, batch_bytes):
    pending = collections.deque(messages)
    frames = []
    while pending:
        frames.append(_take_frame(pending, batch_bytes))
    return frames


def unpacked(frames):
    out = []
    for frame in frames:
        if frame.WhichOneof("msg") == "batch":
            assert len(frame.batch.messages) > 1, "a batch of one is sent unwrapped"
            out.extend(frame.batch.messages)
        else:
            out.append(frame)
    return out


# -- packing --------------------------------------------------------------------


def test_without_batch_bytes_every_message_is_its_own_frame():
    messages = [outcome(i) for i in range(5)]
    assert frames_of(messages, 0) == messages


def test_everything_that_fits_goes_in_one_batch():
    messages = [outcome(i) for i in range(50)]
    frames = frames_of(messages, 1 << 20)
    assert len(frames) == 1 and frames[0].WhichOneof("msg") == "batch"
    assert list(frames[0].batch.messages) == messages


def test_a_single_message_is_not_wrapped():
    assert frames_of([outcome(0)], 1 << 20) == [outcome(0)]


@pytest.mark.parametrize("batch_bytes", [40, 100, 101, 150, 333, 1000])
def test_frames_respect_batch_bytes_and_keep_the_order(batch_bytes):
    messages = [outcome(i, "r" * (i % 7) * 5) for i in range(200)]
    frames = frames_of(messages, batch_bytes)
    assert unpacked(frames) == messages
    for frame in frames:
        if frame.WhichOneof("msg") == "batch":
            assert frame.ByteSize() <= batch_bytes
            assert frame.batch.ByteSize() <= batch_bytes
    if batch_bytes >= 100:
        assert any(f.WhichOneof("msg") == "batch" for f in frames)


def test_a_batch_is_filled_up_to_the_limit():
    messages = [outcome(i) for i in range(10)]
    whole = pb.WorkerMessage(batch=pb.WorkerBatch(messages=messages)).ByteSize()
    assert frames_of(messages, whole) == [pb.WorkerMessage(batch=pb.WorkerBatch(messages=messages))]
    frames = frames_of(messages, whole - 1)
    assert [f.WhichOneof("msg") for f in frames] == ["batch", "outcome"]
    assert list(frames[0].batch.messages) == messages[:9] and frames[1] == messages[9]


def test_an_oversized_message_goes_alone_between_batches():
    big = outcome(99, "b" * 5000)
    messages = [outcome(0), outcome(1), big, outcome(2), outcome(3)]
    frames = frames_of(messages, 1000)
    assert [f.WhichOneof("msg") for f in frames] == ["batch", "outcome", "batch"]
    assert frames[1] == big
    assert unpacked(frames) == messages


# -- the outbox -------------------------------------------------------------------


def test_outbox_sends_one_by_one_until_batches_are_allowed_then_one_frame_per_turn():
    async def main():
        box = _Outbox(_Traffic())
        it = box.frames().__aiter__()
        hello = pb.WorkerMessage(hello=pb.Hello(worker_name="w"))
        box.put(hello)
        box.put(outcome(0))
        box.put(outcome(1))
        # Not welcomed yet: one message per frame, the Hello first.
        assert await it.__anext__() == hello
        assert await it.__anext__() == outcome(0)
        assert await it.__anext__() == outcome(1)
        box.batch_bytes = 1 << 20
        waiting = asyncio.ensure_future(it.__anext__())
        await asyncio.sleep(0)  # the generator waits for a message
        assert not waiting.done()
        for i in range(2, 6):  # queued in one turn: one frame
            box.put(outcome(i))
        frame = await waiting
        assert list(frame.batch.messages) == [outcome(i) for i in range(2, 6)]
        box.put(outcome(6))
        assert await it.__anext__() == outcome(6)
        box.put(pb.WorkerMessage(goodbye=pb.Goodbye()))
        box.close()
        assert (await it.__anext__()).WhichOneof("msg") == "goodbye"
        with pytest.raises(StopAsyncIteration):
            await it.__anext__()
        return box._traffic

    traffic = asyncio.run(main())
    assert (traffic.messages_sent, traffic.frames_sent) == (9, 6)


# -- a worker against a scripted broker -----------------------------------------------


def assignment(i, name="t.add"):
    args = f"[{i}, 1]" if name == "t.add" else "[]"
    return pb.BrokerMessage(
        assignment=pb.Assignment(task=pb.TaskRef(task_id=f"t{i}", attempt=1), name=name, args=args,
                                 chain_id=f"c{i}", phase=pb.PHASE_MAIN, queue="general")
    )


def broker_batch(messages):
    return pb.BrokerMessage(batch=pb.BrokerBatch(messages=messages))


class ScriptedBroker(baton_pb2_grpc.WorkerServicer):
    """One Session: Welcome with ``batch_bytes``, then ``script(requests)``,
    a generator of broker frames that reads the worker's frames itself, then
    whatever the worker sends until it half-closes. Every frame the worker
    sent is kept in ``frames``."""

    def __init__(self, batch_bytes, script):
        self.batch_bytes = batch_bytes
        self.script = script
        self.frames = []
        self.script_done = threading.Event()
        self.ended = threading.Event()

    def Session(self, request_iterator, context):  # noqa: N802 - the gRPC method's name
        def requests():
            for frame in request_iterator:
                self.frames.append(frame)
                yield frame

        reqs = requests()
        try:
            hello = next(reqs)
            assert hello.WhichOneof("msg") == "hello"
            yield pb.BrokerMessage(welcome=pb.Welcome(worker_id="w1", lease_ms=30000, heartbeat_interval_ms=10000,
                                                      batch_bytes=self.batch_bytes))
            yield from self.script(reqs)
            self.script_done.set()
            for _ in reqs:  # until the worker half-closes
                pass
        finally:
            self.ended.set()


def messages_of(frames):
    return unpacked(frames)


def read_outcomes(reqs, count):
    """Read frames until ``count`` outcomes came; the outcomes, by task id."""
    got = {}
    while len(got) < count:
        frame = next(reqs)
        for msg in messages_of([frame]):
            if msg.WhichOneof("msg") == "outcome":
                got[msg.outcome.task.task_id] = msg.outcome
    return got


def acks(outcomes_by_id):
    return broker_batch([pb.BrokerMessage(outcome_ack=pb.OutcomeAck(task=o.task, accepted=True))
                         for o in outcomes_by_id.values()])


def serve_worker(broker, concurrency=4):
    """Run a worker of a small app against ``broker`` until the script ends,
    then drain it (it says Goodbye once every outcome is acknowledged)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    baton_pb2_grpc.add_WorkerServicer_to_server(broker, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    app = Baton(f"127.0.0.1:{port}")

    @app.task(name="t.add")
    def add(x, y):
        return x + y

    @app.task(name="t.wait")
    def wait():
        return "cancelled" if current_task().wait_cancelled(10) else "not cancelled"

    worker = app.worker(concurrency=concurrency, name="scripted")
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        assert broker.script_done.wait(30), "the script did not end"
        worker.stop()
        assert broker.ended.wait(10), "the worker did not end the session"
    finally:
        worker.stop()
        thread.join(10)
        server.stop(0)
    assert not thread.is_alive()
    return worker


def test_a_worker_reads_broker_batches_and_sends_its_outcomes_in_batches():
    n = 300
    seen = {}

    def script(reqs):
        # Every assignment in one frame; their outcomes come back batched.
        yield broker_batch([assignment(i) for i in range(n)])
        outcomes = read_outcomes(reqs, n)
        seen.update(outcomes)
        yield acks(outcomes)

    broker = ScriptedBroker(1 << 20, script)
    worker = serve_worker(broker)
    assert {k: o.success.result for k, o in seen.items()} == {f"t{i}": str(i + 1) for i in range(n)}
    hello = broker.frames[0]
    assert hello.WhichOneof("msg") == "hello" and hello.hello.batch_bytes == READ_BATCH_BYTES
    batches = [f for f in broker.frames if f.WhichOneof("msg") == "batch"]
    assert batches, "no outcome was batched"
    assert all(f.ByteSize() <= 1 << 20 for f in batches)
    kinds = [m.WhichOneof("msg") for m in messages_of(broker.frames)]
    assert kinds[0] == "hello" and "hello" not in kinds[1:] and kinds[-1] == "goodbye"
    assert kinds.count("outcome") == n
    traffic = worker._traffic
    assert traffic.messages_read == n * 2 + 1 and traffic.frames_read == 3  # welcome, assignments, acks
    assert traffic.frames_sent < traffic.messages_sent


def test_messages_of_a_broker_batch_are_handled_in_order():
    """A Cancel right after its Assignment in the same batch reaches the run."""

    def script(reqs):
        yield broker_batch([assignment(0, "t.wait"), pb.BrokerMessage(cancel=pb.Cancel(
            task=pb.TaskRef(task_id="t0", attempt=1), reason="stop"))])
        outcomes = read_outcomes(reqs, 1)
        seen.update(outcomes)
        yield acks(outcomes)

    seen = {}
    serve_worker(ScriptedBroker(1 << 20, script))
    failure = seen["t0"].failure
    assert (failure.error_type, failure.message) == ("Cancelled", "stop")


def test_no_batch_is_sent_to_a_broker_that_reads_none():
    n = 200

    def script(reqs):
        yield broker_batch([assignment(i) for i in range(n)])
        yield acks(read_outcomes(reqs, n))

    broker = ScriptedBroker(0, script)
    worker = serve_worker(broker)
    assert not [f for f in broker.frames if f.WhichOneof("msg") == "batch"]
    assert [f.WhichOneof("msg") for f in broker.frames].count("outcome") == n
    assert worker._traffic.frames_sent == worker._traffic.messages_sent


def test_small_batch_bytes_split_the_outcomes():
    n = 200
    limit = 300

    def script(reqs):
        yield broker_batch([assignment(i) for i in range(n)])
        yield acks(read_outcomes(reqs, n))

    broker = ScriptedBroker(limit, script)
    serve_worker(broker)
    batches = [f for f in broker.frames if f.WhichOneof("msg") == "batch"]
    assert batches and all(f.ByteSize() <= limit for f in batches)
    assert [m.WhichOneof("msg") for m in messages_of(broker.frames)].count("outcome") == n


# -- outcomes linger for their group ------------------------------------------------


def test_outcomes_linger_until_an_urgent_message_or_the_deadline(monkeypatch):
    monkeypatch.setattr(baton.worker, "OUTCOME_LINGER", 60.0)  # only linger() decides here

    async def main():
        box = _Outbox(_Traffic())
        box.batch_bytes = 1 << 20
        it = box.frames().__aiter__()
        wait = {"seconds": 60.0}
        box.linger = lambda: wait["seconds"]
        box.put(outcome(0), urgent=False)
        box.put(outcome(1), urgent=False)
        first = asyncio.ensure_future(it.__anext__())
        await asyncio.sleep(0.05)
        assert not first.done()  # lingering
        box.put(pb.WorkerMessage(heartbeat=pb.Heartbeat()))  # urgent: everything leaves
        frame = await asyncio.wait_for(first, 5)
        assert [m.WhichOneof("msg") for m in frame.batch.messages] == ["outcome", "outcome", "heartbeat"]

        box.put(outcome(2), urgent=False)
        wait["seconds"] = 0.05  # the deadline passes with nothing else queued
        second = asyncio.ensure_future(it.__anext__())
        await asyncio.sleep(0.01)
        assert not second.done()
        wait["seconds"] = 0.0
        assert await asyncio.wait_for(second, 5) == outcome(2)

        box.put(outcome(3), urgent=False)
        wait["seconds"] = 60.0
        box.close()  # closing does not wait either
        assert await asyncio.wait_for(it.__anext__(), 5) == outcome(3)

    asyncio.run(main())


def test_an_outcome_lingers_at_most_outcome_linger_after_it_was_queued():
    """Runs that keep starting (a prefetching worker starts one as each ends)
    do not hold an outcome back for longer than OUTCOME_LINGER."""

    async def main():
        box = _Outbox(_Traffic())
        box.batch_bytes = 1 << 20
        box.linger = lambda: 60.0  # a run always just started
        it = box.frames().__aiter__()
        queued = time.monotonic()
        box.put(outcome(0), urgent=False)
        assert await asyncio.wait_for(it.__anext__(), 5) == outcome(0)
        waited = time.monotonic() - queued
        assert baton.worker.OUTCOME_LINGER <= waited < 0.5

    asyncio.run(main())


def test_a_long_task_does_not_hold_back_the_outcomes_of_short_ones():
    """The short runs' outcomes linger at most about a millisecond for the long one."""
    seen = {}
    took = []

    def script(reqs):
        yield broker_batch([assignment(0, "t.wait")] + [assignment(i) for i in range(1, 4)])
        started = time.monotonic()
        seen.update(read_outcomes(reqs, 3))  # the three short ones, while t.wait runs
        took.append(time.monotonic() - started)
        yield broker_batch([pb.BrokerMessage(cancel=pb.Cancel(task=pb.TaskRef(task_id="t0", attempt=1),
                                                                reason="done"))])
        outcomes = read_outcomes(reqs, 1)
        yield acks({**seen, **outcomes})

    serve_worker(ScriptedBroker(1 << 20, script))  # t.wait would run 10 s: the script reads its outcome last
    assert sorted(seen) == ["t1", "t2", "t3"]
    assert took[0] < 2.0  # milliseconds, unless the machine is very busy; not t.wait's 10 s
