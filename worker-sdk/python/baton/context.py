"""What a running task knows about itself: :class:`TaskContext` and :func:`current_task`.

The worker sets a context variable around every task body (in the pool
thread for plain functions, inside the asyncio task for coroutines), so the
body, and helpers such as ``with throttle(...)``, find the current run
without it being passed through every call. Context variables rather than a
thread-local, because one thread's event loop runs many async tasks at once.
"""

from __future__ import annotations

import threading
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Mapping, Optional, Tuple

from .errors import Cancelled

if TYPE_CHECKING:
    from typing import Protocol

    from . import pb

    class SlotBroker(Protocol):
        """What ``throttle`` needs from the worker: the in-body throttle calls."""

        def acquire_blocking(self, run: "TaskKey", throttle: pb.Throttle) -> int: ...

        async def acquire_async(self, run: "TaskKey", throttle: pb.Throttle) -> int: ...

        def release(self, run: "TaskKey", request_id: int) -> None: ...


TaskKey = Tuple[str, int]
"""(task_id, attempt): one attempt of one task, the protocol's ``TaskRef``."""


class CancelState:
    """Set once by the worker when the broker cancels the run; read by the body.

    The ``threading.Event`` a body sleeps on (:meth:`wait`) is made on first
    use: building one costs a ``Condition`` and a lock, a noticeable part of
    starting a short run, and most runs are never cancelled nor wait.
    """

    __slots__ = ("reason", "_cancelled", "_event")

    def __init__(self) -> None:
        self.reason = ""
        self._cancelled = False
        self._event: Optional[threading.Event] = None

    def cancel(self, reason: str) -> None:
        with _event_lock:
            self.reason = reason
            self._cancelled = True
            if self._event is not None:
                self._event.set()

    def is_set(self) -> bool:
        return self._cancelled

    def wait(self, timeout: Optional[float]) -> bool:
        """Block up to ``timeout`` seconds until cancelled; whether it was."""
        with _event_lock:
            if self._event is None:
                self._event = threading.Event()
                if self._cancelled:
                    self._event.set()
            event = self._event
        return event.wait(timeout)


_event_lock = threading.Lock()
"""Guards the lazy creation of CancelState events (a cancel and a first wait may race)."""


@dataclass(frozen=True)
class TaskContext:
    """The run a task body belongs to, as the broker assigned it.

    ``context`` is the chain's opaque context map (user, request id, ...),
    the same for every step and callback of the chain. ``attempt`` starts at
    1 and grows with each redelivery or retry; ``polls`` and ``retries`` count
    the step's earlier retry-later outcomes and retried failures.
    """

    name: str
    task_id: str
    attempt: int
    chain_id: str
    phase: str
    """"main", "on_success" or "on_failure"."""
    step_index: int
    queue: str
    context: Mapping[str, str]
    polls: int = 0
    retries: int = 0
    timeout_ms: int = 0
    """The run's time limit (0 = none); the broker enforces it by cancelling."""
    _cancel: CancelState = field(default_factory=CancelState, repr=False, compare=False)
    _slots: Optional["SlotBroker"] = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "context", MappingProxyType(dict(self.context)))

    @property
    def traceparent(self) -> Optional[str]:
        """The chain's W3C ``traceparent`` (the submitter's span), if any."""
        return self.context.get("traceparent")

    @property
    def tracestate(self) -> Optional[str]:
        """The W3C ``tracestate`` that goes with :attr:`traceparent`."""
        return self.context.get("tracestate")

    @property
    def trace_id(self) -> Optional[str]:
        """The trace id (32 hex digits) of :attr:`traceparent`."""
        from ._trace import trace_id

        return trace_id(self.traceparent)

    @property
    def key(self) -> TaskKey:
        return (self.task_id, self.attempt)

    @property
    def cancelled(self) -> bool:
        """True once the broker told this worker to stop the run."""
        return self._cancel.is_set()

    @property
    def cancel_reason(self) -> str:
        return self._cancel.reason

    def raise_if_cancelled(self) -> None:
        """Raise :class:`~baton.Cancelled` if the run was cancelled.

        Python threads cannot be interrupted, so a long synchronous body
        calls this between units of work to stop early.
        """
        if self.cancelled:
            raise Cancelled(self._cancel.reason or "cancelled")

    def wait_cancelled(self, timeout: Optional[float] = None) -> bool:
        """Sleep up to ``timeout`` seconds, waking early if the run is cancelled.

        A cancellable ``time.sleep`` for synchronous bodies; returns whether
        the run was cancelled.
        """
        return self._cancel.wait(timeout)


_current: ContextVar[TaskContext] = ContextVar("baton_current_task")


def current_task() -> TaskContext:
    """The context of the task run executing this code.

    Raises:
        RuntimeError: outside a task body run by a Baton worker (for
            example when the function is called directly).
    """
    try:
        return _current.get()
    except LookupError:
        raise RuntimeError(
            "current_task() called outside a task run by a Baton worker"
        ) from None


def enter(ctx: TaskContext) -> "Token[TaskContext]":
    """Make ``ctx`` current (worker use only)."""
    return _current.set(ctx)


def leave(token: "Token[TaskContext]") -> None:
    _current.reset(token)
