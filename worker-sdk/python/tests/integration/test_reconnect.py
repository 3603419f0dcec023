"""The worker's reconnect follows its documented backoff (0.1 s doubling to 2 s)
after a broker restart, whatever else the process did with the broker."""

import socket
import time

from baton.worker import BACKOFF_MAX
from baton_harness import wait_until

DOWN_FOR = 14.0
"""How long the broker stays away. gRPC's own backoff (1 s growing by 1.6,
jittered by 20%) leaves a gap of over 3.5 s between attempts (4.1 s, then
6.6 s) within this window whatever its jitter, so a worker held back by it
fails the check below; one that follows its own backoff never waits more
than BACKOFF_MAX between attempts."""
SLACK = 1.5
"""What an attempt may take beyond the backoff (a new channel, a refused
handshake, a busy machine)."""


def _attempts_while_down(address, seconds):
    """Stand in for the broker on its port for ``seconds``: take each
    connection and close it at once (a broker that is not there yet), and
    return the times of the connections taken."""
    host, port = address.rsplit(":", 1)
    seen = []
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, int(port)))
        listener.listen(64)
        listener.settimeout(0.02)
        start = time.monotonic()
        deadline = start + seconds
        while time.monotonic() < deadline:
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                continue
            seen.append(time.monotonic())
            conn.close()
    return start, seen, deadline


def test_worker_reconnects_within_its_backoff_after_a_broker_restart(tasks, start_worker, broker):
    """Issue 22: a worker whose tasks had submitted work (so its process also
    holds a client channel to the broker) came back 6 s after the broker did.
    gRPC shares one connection per address between a process's channels, with
    gRPC's own reconnect backoff (1 s, then 1.6 times longer up to 120 s), and
    failed the worker's attempts without trying while that backoff ran."""
    worker = start_worker(concurrency=2)
    inner = tasks.demo.delay(10).get(timeout=30)  # submitted from the worker process
    assert tasks.app.AsyncResult(inner).get(timeout=30) == "fast 10"
    broker.kill()

    start, attempts, end = _attempts_while_down(broker.address, DOWN_FOR)
    assert attempts, "the worker never tried to reconnect"
    marks = [start, *attempts, end]
    gaps = [b - a for a, b in zip(marks, marks[1:])]
    assert max(gaps) < BACKOFF_MAX + SLACK, f"attempts {[round(t - start, 2) for t in attempts]}"

    broker.start()
    back = time.monotonic()

    def listed():
        return any(w.worker_name == worker.name for w in broker.workers())

    wait_until(listed, 30, "the worker to reconnect", interval=0.02)
    assert time.monotonic() - back < BACKOFF_MAX + SLACK
