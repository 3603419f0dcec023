"""Batches between the real broker and a Python worker: many short tasks at
concurrency > 1 travel in fewer frames than messages, both ways, and every
one of them is run and reported exactly as without batches."""

import re
import signal

STOPPED = re.compile(r"stopped \(sent (\d+) messages in (\d+) frames, read (\d+) in (\d+)\)")


def test_many_short_tasks_travel_in_batches_both_ways(tasks, start_worker):
    worker = start_worker(concurrency=4)
    n = 400
    results = tasks.app.submit_many([tasks.add.si(i, 1) for i in range(n)])
    assert [r.get(timeout=60) for r in results] == [i + 1 for i in range(n)]
    assert all(r.info().steps[0].attempts == 1 for r in results[:20])

    worker.signal(signal.SIGTERM)  # drain: the stop line counts the traffic
    assert worker.proc.wait(30) == 0
    found = STOPPED.search(worker.log())
    assert found, worker.log()
    sent, sent_frames, read, read_frames = map(int, found.groups())
    # Up: the Hello, n outcomes, a Drain and a Goodbye at least.
    assert sent >= n + 3 and sent_frames < sent
    # Down: the Welcome, n assignments and n acknowledgments.
    assert read >= 2 * n + 1 and read_frames < read
