"""The benchmark's Celery app: no-op tasks and the submissions users write.

The task bodies are those of :mod:`baton_tasks`, line for line. Settings are
Celery's defaults (early acknowledgment, prefetch multiplier 4, JSON) except
for what the comparison needs:

* no result backend and ``task_ignore_result``: nothing reads results, and a
  Celery chain travels in its messages, so chains need no backend; an errback
  (``link_error``) is sent as a message by the worker of the failed task;
* queue ``general``, the name Baton's default queue has;
* the Redis broker is ``$BENCH_REDIS_URL``, the harness's own redis-server.
"""

import os

from celery import Celery, chain

from records import CPU, FAST, NOOP, ON_FAILURE, ON_SUCCESS, SLOW, record, spin

app = Celery("celery_tasks", broker=os.environ.get("BENCH_REDIS_URL"))
app.conf.update(
    task_ignore_result=True,
    task_default_queue="general",
    broker_connection_retry_on_startup=True,
)

SETTINGS = {
    "result_backend": None,
    "task_ignore_result": True,
    "task_acks_late": app.conf.task_acks_late,
    "worker_prefetch_multiplier": app.conf.worker_prefetch_multiplier,
    "task_serializer": app.conf.task_serializer,
}
"""What the results record about this configuration."""


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
        link=on_success.si(i), link_error=on_failure.si(i)
    ),
}
"""One submission of unit ``i`` of each workload, as a ``.delay()`` loop makes it."""
