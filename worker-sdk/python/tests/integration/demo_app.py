"""Tasks the integration tests run in real worker processes.

The seed's shapes (slow/fast/demo, @throttle, heavy) plus probes. Every task
appends what it did to the JSON-lines file named by ``$BATON_TEST_EVENTS``
(with its pid and time), so a test can check order and overlap across
processes after the fact.
"""

import asyncio
import json
import os
import time

from baton import Baton, Fatal, Retry, chain, current_task, throttle

app = Baton()  # the broker address comes from --broker (workers) or the test fixture

SLOW_SECONDS = 0.8


def record(event, **fields):
    path = os.environ.get("BATON_TEST_EVENTS")
    if not path:
        return
    try:
        ctx = current_task()
        fields.setdefault("chain_id", ctx.chain_id)
        fields.setdefault("task_id", ctx.task_id)
        fields.setdefault("attempt", ctx.attempt)
    except RuntimeError:
        pass
    line = json.dumps({"event": event, "pid": os.getpid(), "t": time.time(), **fields})
    with open(path, "a", encoding="utf-8") as f:  # one short O_APPEND write per line
        f.write(line + "\n")


# -- the seed -------------------------------------------------------------------


@app.task(name="demo.demo")
def demo(uuid):
    """The seed's `demo`: a task that submits the slow->fast chain and returns its id."""
    return chain(slow.si(uuid), fast.si(uuid))().id


@app.task(name="demo.slow")
def slow(uuid):
    with throttle(concurrency=1, key=f"vm:{uuid}"):
        record("slow_start", uuid=uuid)
        time.sleep(SLOW_SECONDS)
        record("slow_end", uuid=uuid)
    return uuid


@app.task(name="demo.fast")
def fast(uuid):
    record("fast", uuid=uuid)
    return f"fast {uuid}"


@app.task(name="demo.heavy", heavy=True)
def heavy(uuid=0):
    record("heavy", uuid=uuid)
    return os.getpid()


@app.task(name="demo.dangerous", throttle=1)
def dangerous(uuid=0):
    record("dangerous_start", uuid=uuid)
    time.sleep(0.3)
    record("dangerous_end", uuid=uuid)
    return uuid


@app.task(name="demo.dangerous_seed")
@throttle
def dangerous_seed(uuid=0):
    record("dangerous_start", uuid=uuid)
    time.sleep(0.3)
    record("dangerous_end", uuid=uuid)
    return uuid


@app.task(name="demo.rated", rate="5/s")
def rated(uuid=0):
    """At most 5 starts a second for the task name, across every worker."""
    record("rated", uuid=uuid)
    return uuid


@app.task(name="demo.rated_section")
def rated_section(uuid=0):
    """An in-body rate: 2 entries a second into the section, any number of
    bodies running."""
    with throttle(rate="2/s", key="section"):
        record("rated_section", uuid=uuid)
    return uuid


# -- probes -----------------------------------------------------------------------


@app.task(name="demo.where")
def where(x=0):
    return {"pid": os.getpid(), "queue": current_task().queue, "x": x}


@app.task(name="demo.add")
def add(x, y):
    return x + y


@app.task(name="demo.big")
def big(tag, size):
    """A result of ``size`` characters: large ones are stored apart."""
    return str(tag) * size


@app.task(name="demo.whoami")
def whoami(*args):
    ctx = current_task()
    return {
        "chain_id": ctx.chain_id,
        "attempt": ctx.attempt,
        "context": dict(ctx.context),
        "phase": ctx.phase,
        "step_index": ctx.step_index,
        "name": ctx.name,
        "args": list(args),
    }


@app.task(name="demo.flaky", max_retries=3, retry_backoff=0.05)
def flaky(fail_times):
    attempt = current_task().attempt
    if attempt <= fail_times:
        raise ConnectionError(f"backend unreachable on attempt {attempt}")
    return attempt


@app.task(name="demo.fatal", max_retries=3, retry_backoff=0.05)
def fatal():
    raise Fatal("the volume is gone; retrying cannot help")


@app.task(name="demo.boom")
def boom(uuid):
    raise ValueError(f"backend refused {uuid}")


@app.task(name="demo.poll", max_polls=10)
def poll(ready_after):
    polls = current_task().polls
    record("poll", polls=polls)
    if polls < ready_after:
        raise Retry(after=0.1, message=f"not ready after {polls} polls")
    return polls


@app.task(name="demo.set_ok")
def set_ok(uuid):
    record("set_ok", uuid=uuid)


@app.task(name="demo.set_erred")
def set_erred(failure, uuid):
    record("set_erred", uuid=uuid, failure=failure)


@app.task(name="demo.sleeper")
def sleeper(seconds, tag):
    """Sleeps in a pool thread, waking early if the broker cancels the run."""
    record("sleeper_start", tag=tag)
    if current_task().wait_cancelled(seconds):
        record("sleeper_cancelled", tag=tag)
        return None
    record("sleeper_end", tag=tag)
    return tag


@app.task(name="demo.async_sleeper")
async def async_sleeper(seconds, tag):
    record("async_start", tag=tag)
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        record("async_cancelled", tag=tag)
        raise
    record("async_end", tag=tag)
    return tag


@app.task(name="demo.async_slow")
async def async_slow(uuid):
    async with throttle(concurrency=1, key=f"vm:{uuid}"):
        record("slow_start", uuid=uuid)
        await asyncio.sleep(SLOW_SECONDS)
        record("slow_end", uuid=uuid)
    return uuid


@app.task(name="demo.crash_first")
def crash_first(tag):
    """Its first attempt kills the process that runs it (in a process pool, a
    child); later attempts return."""
    ctx = current_task()
    record("crash_first", tag=tag)
    if ctx.attempt == 1:
        os._exit(3)
    return {"tag": tag, "attempt": ctx.attempt, "pid": os.getpid()}


@app.task(name="demo.pid")
def pid():
    return os.getpid()


@app.task(name="demo.spin")
def spin(n):
    """CPU-bound: holds the GIL for the whole loop."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


@app.task(name="demo.spin_span")
def spin_span(n):
    """CPU-bound, saying where and when it ran: [pid, start, end] (unix s)."""
    start = time.time()
    spin(n)
    return [os.getpid(), start, time.time()]


# -- the same plain functions, without the coroutines ------------------------

plain_app = Baton()
"""The demo's plain functions alone. A worker of an app without ``async def``
tasks hands its prefetched runs to its thread pool at once (they wait in the
pool's queue, not in the session loop): ``--app demo_app:plain_app`` tests
that path."""
for _task in list(app.tasks.values()):
    if not _task.is_async:
        plain_app.task(name=_task.name, **_task.options)(_task.fn)
