"""Exceptions a task body raises to steer its outcome, and those the client raises.

Inside a task the outcome is decided by how the body ends, not by calls into
the SDK, so existing Celery code keeps its shape:

* returning reports success (the value, as JSON);
* raising any exception reports a *retryable* failure: the broker retries it
  while the task's ``max_retries`` allows (default 0, so by default the chain
  fails and on_failure runs);
* raising :class:`Fatal` (or a subclass) reports a failure the broker must not
  retry, whatever ``max_retries`` says;
* raising :class:`Retry` reports "not done yet, run me again later": the step
  keeps its place in its chain and spends one unit of its poll budget.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence, Union

import grpc

if TYPE_CHECKING:
    from .client import AsyncResult

Seconds = Union[float, int, timedelta]


def to_ms(value: Seconds, what: str) -> int:
    """Convert seconds (or a timedelta) to whole milliseconds, refusing negatives."""
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if seconds < 0:
        raise ValueError(f"{what} must not be negative (got {value!r})")
    return int(round(seconds * 1000))


class BatonError(Exception):
    """Base class of the errors this package raises."""


class Retry(Exception):
    """Raise in a task body to ask the broker to run the step again in ``after`` seconds.

    This is NodeConductor's polling ("retry until the volume is available")
    without a worker sleeping or a queue being re-posted: the broker keeps the
    step's place in its chain and counts the poll against ``max_polls``. When
    that budget runs out the step fails with ``PollBudgetExhausted``.
    """

    def __init__(self, after: Seconds, message: str = "") -> None:
        super().__init__(message or f"retry in {after}s")
        self.delay_ms = to_ms(after, "Retry(after=...)")
        self.message = message


class Fatal(Exception):
    """Raise in a task body for a failure that retrying cannot fix.

    The failure is reported non-retryable, so the chain fails at once and
    on_failure runs, even if the task allows retries. The error type shown in
    the failure record is the class name, except for a bare ``Fatal`` raised
    ``from`` another exception, which reports the cause's type::

        try:
            size = int(raw)
        except ValueError as exc:
            raise Fatal(f"bad size {raw!r}") from exc   # error_type "ValueError"

    Subclass it to name your own fatal errors (``class QuotaExceeded(Fatal)``).
    """


class Cancelled(BatonError):
    """The current run was cancelled by the broker (chain cancelled, time limit, lease lost).

    Raised by :meth:`baton.TaskContext.raise_if_cancelled` and by a
    ``throttle`` block still waiting for its slot. Threads cannot be killed,
    so a synchronous body that wants to stop early checks for cancellation
    itself; whatever it returns afterwards is reported as a ``Cancelled``
    failure, which the broker records only if the run is still current.
    """


class ThrottleError(BatonError):
    """The broker refused an in-body throttle request (``WorkerError``)."""


class ThrottleRefused(ThrottleError, Fatal):
    """The broker refused an in-body throttle request: asking again would be
    refused again, so raised from a body it fails the step for good (error
    type ``ThrottleRefused``, as the Rust and Go SDKs report it), whatever
    the task's retries. Catch :class:`ThrottleError` to handle it."""


class ChainFailed(BatonError):
    """Raised by :meth:`AsyncResult.get` when the chain failed.

    ``record`` is the failure record, the same dict a mutable on_failure
    signature receives: ``chain_id``, ``phase``, ``step_index``,
    ``task_name``, ``task_id``, ``attempt``, ``error_type``, ``message`` and
    ``traceback`` (the remote Python traceback, if the task was Python).
    """

    def __init__(self, record: Mapping[str, Any]) -> None:
        self.record = dict(record)
        super().__init__(
            f"{self.record.get('task_name', '?')} failed: "
            f"{self.record.get('error_type', '?')}: {self.record.get('message', '')}"
        )

    @property
    def error_type(self) -> str:
        return str(self.record.get("error_type", ""))

    @property
    def traceback(self) -> str:
        return str(self.record.get("traceback", ""))


class ChainCancelled(BatonError):
    """Raised by :meth:`AsyncResult.get` when the chain was cancelled."""

    def __init__(self, chain_id: str, reason: Optional[str] = None) -> None:
        self.chain_id = chain_id
        self.reason = reason or ""
        super().__init__(f"chain {chain_id} was cancelled" + (f": {reason}" if reason else ""))


class WorkerConfigError(BatonError):
    """The broker refused the worker's Hello (bad queue or task name): retrying cannot help."""


class PartialSubmission(BatonError, grpc.RpcError):
    """:meth:`Baton.submit_many` stored some batches, then the broker refused one.

    Each batch of up to 1000 chains is stored all or nothing, so the chains
    of the earlier batches are stored (``stored``, in order) and none after.
    It is a ``grpc.RpcError`` too, with the refused call's ``code()`` and
    ``details()``, so code that catches what a refused first batch raises
    catches this as well. The ``chains[i]`` the details name counts from the
    start of the refused batch, that is from item ``len(stored)``.
    """

    def __init__(self, stored: Sequence["AsyncResult"], total: int, cause: grpc.RpcError) -> None:
        self.stored = list(stored)
        self.cause = cause
        super().__init__(
            f"{len(self.stored)} of {total} chains stored; the batch from item {len(self.stored)} "
            f"was refused: {cause.code().name}: {cause.details()}"
        )

    def code(self) -> grpc.StatusCode:
        return self.cause.code()

    def details(self) -> str:
        return str(self.cause.details())


class SubmissionRefused(BatonError, grpc.RpcError):
    """The broker refused one chain of a pipelined ``SubmitChains`` call.

    Pipelined ``delay()`` calls travel together (see :mod:`baton._pipeline`),
    and the broker names the chain it refuses: ``chains[i]: <why>``. This is
    what a ``SubmitChain`` of that chain alone would have raised: a
    ``grpc.RpcError`` with the same ``code()`` and the ``details()``
    without the ``chains[i]: `` prefix. ``cause`` is the refused call's error.
    """

    def __init__(self, cause: grpc.RpcError, details: str) -> None:
        self.cause = cause
        self._details = details
        super().__init__(f"{cause.code().name}: {details}")

    def code(self) -> grpc.StatusCode:
        return self.cause.code()

    def details(self) -> str:
        return self._details

    def initial_metadata(self) -> Any:
        return self.cause.initial_metadata() if hasattr(self.cause, "initial_metadata") else ()

    def trailing_metadata(self) -> Any:
        return self.cause.trailing_metadata() if hasattr(self.cause, "trailing_metadata") else ()
