"""The benchmark's Baton app: no-op tasks and the submissions users write.

The task bodies are those of :mod:`celery_tasks`, line for line: one call to
:func:`records.record`. The broker is ``$BATON_ADDR`` (set by the harness
for itself and for the workers it starts).
"""

from baton import Baton, chain

from records import CPU, FAST, NOOP, ON_FAILURE, ON_SUCCESS, SLOW, record, spin

app = Baton()


@app.task
def noop(i):
    record(i, NOOP)


@app.task
def slow(i):
    record(i, SLOW)


@app.task
def fast(i):
    record(i, FAST)
    return i  # for a mutable on_success (see BATCH in baton_tasks)


@app.task
def on_success(i):
    record(i, ON_SUCCESS)


@app.task
def on_failure(i):
    record(i, ON_FAILURE)


@app.task
def cpu(i):
    spin()
    record(i, CPU)  # at the end: the throughput of CPU-bound bodies counts their work


LOOP = {
    "noop": lambda i: noop.delay(i),
    "cpu": lambda i: cpu.delay(i),
    "chains": lambda i: chain(slow.si(i), fast.si(i)).delay(),
    "executors": lambda i: chain(slow.si(i), fast.si(i)).apply_async(
        on_success=on_success.si(i), on_failure=on_failure.si(i)
    ),
}
"""One submission of unit ``i`` of each workload, as a ``.delay()`` loop makes it."""

BATCH = {
    "noop": lambda i: noop.si(i),
    "cpu": lambda i: cpu.si(i),
    "chains": lambda i: chain(slow.si(i), fast.si(i)),
    "executors": lambda i: chain(slow.si(i), fast.si(i)),
}
"""Unit ``i`` of each workload as an item of ``app.submit_many(items, **BATCH_OPTIONS[workload])``."""

BATCH_OPTIONS = {
    "noop": {},
    "cpu": {},
    "chains": {},
    "executors": {"on_success": on_success.s(), "on_failure": on_failure.s()},
}
"""Options ``submit_many`` applies to every chain of a call.

The callbacks are shared by all chains of a batch, so they cannot carry the
unit's index as the loop's ``on_success.si(i)`` does: the mutable
``on_success.s()`` receives it as the last step's result instead (``fast``
returns it). ``on_failure.s()`` would receive the failure record; it never runs.
"""
