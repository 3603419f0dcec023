"""Pipelined delay(), flush(), wait_stored() and submit_many against the real broker."""

import logging
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import grpc
import pytest

import baton
from baton import chain, pb

BAD_NAME = "demo.bad\x01name"  # the broker refuses control characters in task names


def queued(broker):
    """Ready tasks per queue, as the broker counts them."""
    return {q.name: q.ready for q in broker.admin.ListQueues(pb.ListQueuesRequest(), timeout=5).queues}


def test_a_loop_of_delays_returns_before_the_acknowledgments(tasks, start_worker, broker):
    """With the broker stopped (SIGSTOP) no answer can come: the loop returns
    anyway, every handle already has its id, and once the broker runs again
    all 500 chains are stored and run."""
    tasks.fast.delay(0).wait_stored()  # the channel is connected
    broker.proc.send_signal(signal.SIGSTOP)
    try:
        results = [tasks.add.delay(i, 1) for i in range(500)]
        with pytest.raises(TimeoutError):
            results[0].wait_stored(timeout=0.2)
        assert len({r.id for r in results}) == 500
    finally:
        broker.proc.send_signal(signal.SIGCONT)
    tasks.app.flush(timeout=30)
    start_worker(concurrency=8)
    assert [r.get(timeout=60) for r in results] == [i + 1 for i in range(500)]


def test_flush_raises_a_refused_submission_and_loses_nothing_else(tasks, start_worker, caplog):
    start_worker(concurrency=4)
    with caplog.at_level(logging.WARNING, logger="baton.client"):
        good = [tasks.add.delay(i, 0) for i in range(50)]
        bad = tasks.app.signature(BAD_NAME, immutable=True).delay()
        good += [tasks.add.delay(i, 0) for i in range(50, 100)]
        with pytest.raises(grpc.RpcError) as raised:
            tasks.app.flush(timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "steps[0].name contains control characters" in raised.value.details()
    assert f"chain {bad.id} was not stored: INVALID_ARGUMENT" in caplog.text
    tasks.app.flush()  # reported once
    assert [r.get(timeout=60) for r in good] == list(range(100))


def test_wait_stored_raises_the_brokers_refusal(tasks):
    r = tasks.app.signature("x" * 201, immutable=True).delay()
    with pytest.raises(grpc.RpcError) as raised:
        r.wait_stored(timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == "steps[0].name is longer than 200 characters"
    with pytest.raises(grpc.RpcError):
        r.get(timeout=5)


def test_a_resent_chain_id_is_deduplicated(tasks, start_worker):
    request = chain(tasks.add.si(2, 3)).to_request()
    request.chain_id = str(uuid.uuid4())
    first = tasks.app.submit(request)
    again = tasks.app.submit(request)
    assert (first.dedup, again.dedup) == (None, "chain_id")
    assert first.id == again.id == request.chain_id
    start_worker()
    assert again.get(timeout=30) == 5


def test_idempotency_key_is_acknowledged_inside_apply_async(tasks):
    first = tasks.fast.apply_async(args=[1], idempotency_key="pipelined-vm-1")
    again = tasks.fast.apply_async(args=[1], idempotency_key="pipelined-vm-1")
    assert again._submission is None  # stored already: the broker's id is final
    assert (again.id, again.dedup) == (first.id, "idempotency_key")


def test_pipeline_false_raises_from_delay(broker):
    app = baton.Baton(broker.address, pipeline=False)
    try:
        with pytest.raises(grpc.RpcError) as raised:
            app.signature(BAD_NAME, immutable=True).delay()
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert app.signature("demo.add", (1, 2), immutable=True).delay().status() == "RUNNING"
    finally:
        app.close()


def test_submit_many_stores_2500_in_order(tasks, start_worker):
    results = tasks.app.submit_many([tasks.add.si(i, 0) for i in range(2500)])
    assert len({r.id for r in results}) == 2500 and all(r.dedup is None for r in results)
    start_worker(concurrency=8)
    assert [r.get(timeout=120) for r in results] == list(range(2500))


def test_submit_many_with_one_refused_chain_stores_none(tasks, broker, monkeypatch):
    sent = []
    submit_many = tasks.app.client.submit_many

    def spy(requests):
        sent.extend(requests)
        return submit_many(requests)

    monkeypatch.setattr(tasks.app.client, "submit_many", spy)
    items = [tasks.add.si(1, 1), tasks.app.signature(BAD_NAME), chain(tasks.add.si(2, 2), tasks.add.s(3))]
    with pytest.raises(grpc.RpcError) as raised:
        tasks.app.submit_many(items, queue="batch")
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details().startswith("chains[1]: ")
    assert len(sent) == 3
    for request in (sent[0], sent[2]):
        with pytest.raises(grpc.RpcError) as missing:
            tasks.app.AsyncResult(request.chain_id).status()
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert queued(broker).get("batch", 0) == 0
    tasks.app.submit_many([items[0], items[2]], queue="batch")
    assert queued(broker)["batch"] == 2


def test_a_script_ending_right_after_its_loop_drops_nothing(broker, tmp_path):
    """The exit hook waits for the submissions in flight; a refused one is logged."""
    script = tmp_path / "producer.py"
    script.write_text(textwrap.dedent(f"""
        from baton import Baton
        app = Baton({broker.address!r})
        ids = [app.signature("demo.add", (i, 0), immutable=True).delay().id for i in range(300)]
        app.signature({BAD_NAME!r}, immutable=True).delay()
        print(" ".join(ids))
    """))
    root = str(Path(baton.__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "was not stored: INVALID_ARGUMENT: steps[0].name contains control characters" in out.stderr
    app = baton.Baton(broker.address)
    try:
        assert {app.AsyncResult(i).status() for i in out.stdout.split()} == {"RUNNING"}
        assert queued(broker)["general"] == 300
    finally:
        app.close()
