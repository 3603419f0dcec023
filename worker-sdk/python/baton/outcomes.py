"""How a task body's ending becomes an ``Outcome``: the one place that maps Python to the protocol.

* a returned value -> ``Success`` (JSON); an unencodable value is a fatal
  ``EncodeError``, since running the task again would return it again;
* :class:`~baton.Retry` -> ``RetryLater``;
* :class:`~baton.Fatal` -> non-retryable ``Failure``;
* :class:`~baton.Cancelled` -> non-retryable ``Failure`` of type ``Cancelled``;
* an exception marked with :func:`mark_final` -> non-retryable ``Failure``
  with its own type, message and traceback (how :mod:`baton.celery` fails a
  task at once, as Celery does for exceptions outside ``autoretry_for``,
  without wrapping the user's exception in another);
* any other exception -> retryable ``Failure`` with its type name, message
  and formatted traceback (the broker decides whether ``max_retries`` allows
  another attempt).
"""

from __future__ import annotations

import traceback as _traceback
from typing import Any, Awaitable, Callable

from . import _json, pb
from ._pipeline import stored_before_return
from ._trace import end_span, task_span
from .context import TaskContext, enter, leave
from .errors import Cancelled, Fatal, Retry


FINAL_ATTRIBUTE = "__baton_final__"
"""Set on an exception by :func:`mark_final`: report it as not retryable."""


def mark_final(exc: BaseException) -> BaseException:
    """Mark ``exc`` so that, raised from a task body, it fails the step for
    good: the broker does not retry it whatever ``max_retries`` says. The
    failure record keeps ``exc``'s own type, message and traceback. Returns
    ``exc``, for ``raise mark_final(exc)``."""
    setattr(exc, FINAL_ATTRIBUTE, True)
    return exc


def is_final(exc: BaseException) -> bool:
    return bool(getattr(exc, FINAL_ATTRIBUTE, False))


def failure(error_type: str, message: str, traceback: str = "", retryable: bool = False) -> pb.Outcome:
    return pb.Outcome(
        failure=pb.Failure(
            error_type=error_type, message=message, traceback=traceback, retryable=retryable
        )
    )


def worker_error(exc: BaseException) -> pb.Outcome:
    """The worker failed to run a body (a bug of the SDK, not of the task): retryable."""
    return failure("WorkerError", f"worker failed to run the task: {exc!r}", retryable=True)


def cancelled(reason: str) -> pb.Outcome:
    return failure("Cancelled", reason or "cancelled by the broker")


def from_result(value: Any, task_name: str) -> pb.Outcome:
    try:
        text = _json.dumps(value, f"result of {task_name}")
    except TypeError as exc:
        return failure("EncodeError", str(exc), _format(exc), retryable=False)
    return pb.Outcome(success=pb.Success(result=text))


def _format(exc: BaseException) -> str:
    return "".join(_traceback.format_exception(type(exc), exc, exc.__traceback__))


def from_exception(exc: BaseException) -> pb.Outcome:
    if isinstance(exc, Retry):
        return pb.Outcome(retry_later=pb.RetryLater(delay_ms=exc.delay_ms, message=exc.message))
    if isinstance(exc, Cancelled):
        return failure("Cancelled", str(exc), _format(exc))
    if isinstance(exc, Fatal):
        cause = exc.__cause__
        if type(exc) is Fatal and cause is not None:
            error_type = type(cause).__name__
        else:
            error_type = type(exc).__name__
        return failure(error_type, str(exc) or str(cause or ""), _format(exc), retryable=False)
    if is_final(exc):
        return failure(type(exc).__name__, str(exc), _format(exc), retryable=False)
    return failure(type(exc).__name__, str(exc), _format(exc), retryable=True)


def run_sync(fn: Callable[..., Any], ctx: TaskContext, args: list[Any], kwargs: dict[str, Any]) -> pb.Outcome:
    """Run a plain task body (in a pool thread) with its context current.

    The chains the body submitted are stored before the outcome is made
    (:func:`~baton._pipeline.stored_before_return`).
    """
    token = enter(ctx)
    try:
        with task_span(ctx.name, ctx.chain_id, ctx.task_id, ctx.attempt, ctx.context) as span:
            try:
                with stored_before_return():
                    value = fn(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - every ending is reported, SystemExit too
                outcome = from_exception(exc)
            else:
                outcome = from_result(value, ctx.name)
            end_span(span, outcome)
    finally:
        leave(token)
    return outcome


async def run_async(
    fn: Callable[..., Awaitable[Any]], ctx: TaskContext, args: list[Any], kwargs: dict[str, Any]
) -> pb.Outcome:
    """Run a coroutine task body; ``CancelledError`` propagates (the worker reports it).

    As in :func:`run_sync`, the chains it submitted are stored first; the
    wait blocks the task loop, as each ``delay()`` in a coroutine always did.
    """
    enter(ctx)  # this asyncio task runs in its own copy of the context
    with task_span(ctx.name, ctx.chain_id, ctx.task_id, ctx.attempt, ctx.context) as span:
        try:
            with stored_before_return():
                value = await fn(*args, **kwargs)
        except Exception as exc:
            outcome = from_exception(exc)
        else:
            outcome = from_result(value, ctx.name)
        end_span(span, outcome)
    return outcome
