"""``throttle``: one object for the three throttle forms of the seed and the design.

* As a bare decorator under ``@app.task`` (the seed's ``@shared_task`` over
  ``@throttle``) or as ``@throttle(concurrency=2, key=...)``: declares the
  whole-task throttle. The broker then dispatches the task only when it can
  take a slot, so a waiting task occupies no worker.
* As a context manager inside a running task, ``with throttle(concurrency=1,
  key=k):`` (``async with`` in coroutines): asks the broker for a slot on
  behalf of the current run, blocks until the broker grants it and releases
  it when the block exits. If the worker dies instead, the broker frees the
  slot when the run's lease lapses.
* As a signature option, ``sig.set(throttle=throttle(key=..., shared=True,
  scope="chain"))``: a per-signature or chain-scoped throttle.

The Python side only asks and waits: limits, FIFO order and crash recovery
live in the broker.
"""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Any, Callable, Optional, Type, TypeVar, Union, overload

from . import pb
from .context import TaskKey, current_task

F = TypeVar("F", bound=Callable[..., Any])

ATTRIBUTE = "__baton_throttle__"
"""Attribute under which ``@throttle`` leaves its declaration on a function."""

_SCOPES = {
    "task": pb.THROTTLE_SCOPE_TASK,
    "chain": pb.THROTTLE_SCOPE_CHAIN,
}


class Throttle:
    """A throttle declaration: at most ``concurrency`` holders per identity.

    The identity is (task name, ``key``), with an empty key meaning the whole
    task name ("*"), or ``key`` alone when ``shared`` is true (one limit
    across task names, e.g. ``"tenant:42"``). ``scope`` says who holds a
    declared slot: one run (``"task"``, the default) or the chain through its
    remaining steps (``"chain"``); it has no meaning for an in-body
    throttle, whose slot is held by the ``with`` block.
    """

    __slots__ = ("concurrency", "key", "shared", "scope", "_held", "_lock")

    def __init__(
        self, concurrency: int = 1, key: str = "", shared: bool = False, scope: str = "task"
    ) -> None:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"throttle concurrency must be an int >= 1 (got {concurrency!r})")
        if not isinstance(key, str):
            raise TypeError(f"throttle key must be a str (got {type(key).__name__})")
        if shared and not key:
            raise ValueError("a shared throttle needs a key (it names the identity)")
        if scope not in _SCOPES:
            raise ValueError(f"throttle scope must be 'task' or 'chain' (got {scope!r})")
        self.concurrency = concurrency
        self.key = key
        self.shared = shared
        self.scope = scope
        # Granted request ids per run, so one module-level throttle object can be
        # entered by many concurrent runs (and nested within one run).
        self._held: dict[TaskKey, list[int]] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"throttle(concurrency={self.concurrency}, key={self.key!r}, "
            f"shared={self.shared}, scope={self.scope!r})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Throttle):
            return NotImplemented
        return self.to_pb() == other.to_pb()

    __hash__ = None  # type: ignore[assignment]

    def to_pb(self) -> pb.Throttle:
        return pb.Throttle(
            concurrency=self.concurrency, key=self.key, shared=self.shared, scope=_SCOPES[self.scope]
        )

    # -- decorator form ----------------------------------------------------

    def __call__(self, fn: F) -> F:
        """Declare this throttle on a task function (or an ``app.task`` Task)."""
        from .app import Task  # local: app imports this module

        if isinstance(fn, Task):
            fn.options["throttle"] = self
            return fn
        if not callable(fn):
            raise TypeError(f"@throttle decorates a function, not {type(fn).__name__}")
        setattr(fn, ATTRIBUTE, self)
        return fn

    # -- in-body form ------------------------------------------------------

    def __enter__(self) -> "Throttle":
        ctx = current_task()
        if ctx._slots is None:
            raise RuntimeError("throttle() needs a task run by a Baton worker")
        request_id = ctx._slots.acquire_blocking(ctx.key, self.to_pb())
        self._push(ctx.key, request_id)
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self._release()

    async def __aenter__(self) -> "Throttle":
        ctx = current_task()
        if ctx._slots is None:
            raise RuntimeError("throttle() needs a task run by a Baton worker")
        request_id = await ctx._slots.acquire_async(ctx.key, self.to_pb())
        self._push(ctx.key, request_id)
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self._release()

    def _push(self, run: TaskKey, request_id: int) -> None:
        with self._lock:
            self._held.setdefault(run, []).append(request_id)

    def _release(self) -> None:
        ctx = current_task()
        with self._lock:
            stack = self._held[ctx.key]
            request_id = stack.pop()
            if not stack:
                del self._held[ctx.key]
        assert ctx._slots is not None
        ctx._slots.release(ctx.key, request_id)


@overload
def throttle(fn: F, /) -> F: ...


@overload
def throttle(
    *, concurrency: int = 1, key: str = "", shared: bool = False, scope: str = "task"
) -> Throttle: ...


def throttle(
    fn: Optional[F] = None,
    /,
    *,
    concurrency: int = 1,
    key: str = "",
    shared: bool = False,
    scope: str = "task",
) -> Union[F, Throttle]:
    """Build a :class:`Throttle`; used bare (``@throttle``) it decorates ``fn`` at once.

    ``@throttle`` alone means concurrency 1 for the whole task name, as in the
    seed. See the module documentation for the three forms.
    """
    spec = Throttle(concurrency=concurrency, key=key, shared=shared, scope=scope)
    if fn is not None:
        return spec(fn)
    return spec


def declared_on(fn: Callable[..., Any]) -> Optional[Throttle]:
    """The throttle a ``@throttle`` decorator left on ``fn``, if any."""
    found = getattr(fn, ATTRIBUTE, None)
    return found if isinstance(found, Throttle) else None
