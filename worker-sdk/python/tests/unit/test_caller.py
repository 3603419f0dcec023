"""The client's caller thread: pipelined calls are made there, blocking, and
their futures settle there, in a forked child as in its parent."""

import os
import threading

import pytest

from baton.client import _Caller


def test_calls_run_in_order_on_one_thread_and_settle_their_futures():
    caller = _Caller()
    seen = []
    futures = [caller.call(lambda i=i: seen.append((i, threading.current_thread().name)) or i) for i in range(5)]
    assert [f.result(timeout=5) for f in futures] == list(range(5))
    assert seen == [(i, "baton-submit") for i in range(5)]

    def refused():
        raise ValueError("no")

    failed = caller.call(refused)
    with pytest.raises(ValueError, match="no"):
        failed.result(timeout=5)
    # The thread goes on after a failure; a callback added later runs at once.
    done = threading.Event()
    later = caller.call(lambda: "next")
    assert later.result(timeout=5) == "next"
    later.add_done_callback(lambda f: done.set())
    assert done.is_set()
    assert sum(t.name == "baton-submit" for t in threading.enumerate()) >= 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_gets_a_caller_thread_of_its_own():
    caller = _Caller()
    assert caller.call(lambda: os.getpid()).result(timeout=5) == os.getpid()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the parent's thread did not survive the fork
        try:
            answer = caller.call(lambda: os.getpid()).result(timeout=5)
            os.write(write, b"ok" if answer == os.getpid() else b"wrong pid")
        finally:
            os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    assert os.read(read, 100) == b"ok"
    assert status == 0
    # The parent's thread still serves it.
    assert caller.call(lambda: "parent").result(timeout=5) == "parent"
