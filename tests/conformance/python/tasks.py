"""The Python conformance worker: the task names every SDK's conformance
worker registers, with the same behaviour (see ``tests/conformance/README.md``),
so the one runner (``tests/conformance/run.py``) can check each SDK and mix them.

    BATON_ADDR=127.0.0.1:7070 python -m baton worker --app tasks:app \
        --queues general,heavy --concurrency 4        # from this directory

| task                       | does                                                                  |
| -------------------------- | --------------------------------------------------------------------- |
| noop()                     | returns null                                                          |
| echo(x)                    | returns x unchanged                                                   |
| add(a, b)                  | returns a + b                                                         |
| fail_once(key)             | attempt 1 raises ConformanceError("fail_once <key>: attempt 1"), retryable; declared max_retries 1, retry_backoff 100 ms; a later attempt returns its attempt number |
| fail_always(message)       | raises ConformanceError(message), retryable; declared max_retries 0: the chain fails with error_type "ConformanceError" |
| retry_later_n(n)           | while polls < n: Retry after 50 ms ("poll <polls> of <n>"); then returns the polls seen (n) |
| sleep(ms)                  | sleeps ms (cut short by a cancel, which reports Cancelled); returns ms |
| throttled_in_body(key, ms) | holds an in-body slot of (throttled_in_body, key), concurrency 1, for ms; returns key |
| throttled_declared(ms)     | declared throttle concurrency 1 on the task name; sleeps ms; returns ms |
| rated_in_body(key)         | enters an in-body throttle of (rated_in_body, key) with a rate of 4 a second and no concurrency limit, leaves at once; returns key |
| heavy()                    | declared heavy (routed to the "heavy" queue); returns the queue it ran from |
| cancellable(ms)            | waits up to ms for its cancel: cancelled, it reports Cancelled (error_type "Cancelled"); else returns "not cancelled" |
| nan()                      | returns the float NaN, which JSON cannot carry: the SDK's encoder decides (null, or a failure), but the run must end |
| trace_id()                 | returns the trace id of the chain's W3C traceparent as the SDK reads it (its context key "traceparent"), or null |

With ``$BATON_CONFORMANCE_RECORD`` set to a file, the throttled tasks append one
JSON line when they start holding their slot and one just before they give it
back (``{"sdk": "python", "event": "enter"|"leave", "task", "key", "task_id",
"attempt", "t_us"}``, wall-clock microseconds), each with one ``write`` to the
file opened for appending.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any, Optional

from baton import Baton, Retry, current_task, throttle

app = Baton()  # $BATON_ADDR, else 127.0.0.1:7070


class ConformanceError(Exception):
    """What the failing tasks raise; their failure records say "ConformanceError"."""


def record(event: str, key: str) -> None:
    """Appends an enter or leave line to $BATON_CONFORMANCE_RECORD, if set."""
    path = os.environ.get("BATON_CONFORMANCE_RECORD")
    if not path:
        return
    ctx = current_task()
    line = json.dumps(
        {
            "sdk": "python",
            "event": event,
            "task": ctx.name,
            "key": key,
            "task_id": ctx.task_id,
            "attempt": ctx.attempt,
            "t_us": time.time_ns() // 1000,
        }
    )
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


@app.task(name="noop")
def noop() -> None:
    return None


@app.task(name="trace_id")
def trace_id() -> Optional[str]:
    return current_task().trace_id


@app.task(name="echo")
def echo(x: Any) -> Any:
    return x


@app.task(name="add")
def add(a: Any, b: Any) -> Any:
    return a + b


@app.task(name="fail_once", max_retries=1, retry_backoff=0.1)
def fail_once(key: str) -> int:
    attempt = current_task().attempt
    if attempt == 1:
        raise ConformanceError(f"fail_once {key}: attempt 1")
    return attempt


@app.task(name="fail_always", max_retries=0)
def fail_always(message: str) -> None:
    raise ConformanceError(message)


@app.task(name="retry_later_n")
def retry_later_n(n: int) -> int:
    polls = current_task().polls
    if polls < n:
        raise Retry(after=0.05, message=f"poll {polls} of {n}")
    return polls


# async: a cancel raises asyncio.CancelledError in the body, reported as Cancelled.
@app.task(name="sleep")
async def sleep(ms: int) -> int:
    await asyncio.sleep(ms / 1000)
    return ms


@app.task(name="throttled_in_body")
async def throttled_in_body(key: str, ms: int) -> str:
    async with throttle(concurrency=1, key=key):
        record("enter", key)
        await asyncio.sleep(ms / 1000)
        record("leave", key)
    return key


@app.task(name="rated_in_body")
async def rated_in_body(key: str) -> str:
    async with throttle(rate="4/s", key=key):
        record("enter", key)
        record("leave", key)
    return key


@app.task(name="throttled_declared", throttle=1)
async def throttled_declared(ms: int) -> int:
    record("enter", "*")
    await asyncio.sleep(ms / 1000)
    record("leave", "*")
    return ms


@app.task(name="heavy", heavy=True)
def heavy() -> str:
    return current_task().queue


@app.task(name="cancellable")
async def cancellable(ms: int) -> str:
    await asyncio.sleep(ms / 1000)
    return "not cancelled"


@app.task(name="nan")
def nan() -> float:
    return float("nan")
