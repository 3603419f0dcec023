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

Any of the three may carry a rate, ``throttle(rate="10/s", key=tenant)``:
at most that many starts per period for the identity, across every worker
and broker restart (Celery's ``rate_limit`` is per worker; this one is
global). A rate alone limits no holders at once; with ``concurrency`` both
hold.

The Python side only asks and waits: limits, FIFO order and crash recovery
live in the broker.
"""

from __future__ import annotations

import re
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


_UNITS_MS = {"ms": 1, "s": 1000, "sec": 1000, "m": 60_000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([a-z]+)\s*$")


def parse_rate(text: str) -> pb.Rate:
    """A rate as Celery writes it, ``"10/s"``, ``"100/m"``, ``"5/h"``,
    ``"1000/d"``, or with a numbered period, ``"3/10s"``; the burst is left
    at its default (evenly spaced starts).

    Raises:
        ValueError: naming what is wrong with ``text``.
    """
    if not isinstance(text, str):
        raise TypeError(f"a rate is a str such as '10/s' (got {type(text).__name__})")
    found = _RATE.match(text)
    if found is None:
        raise ValueError(f"rate {text!r}: expected COUNT/PERIOD, such as 10/s or 100/m")
    count, number, unit = int(found[1]), int(found[2] or 1), found[3]
    if unit not in _UNITS_MS:
        raise ValueError(f"rate {text!r}: the period {unit!r} is not a unit (ms, s, m, h, d)")
    if count < 1:
        raise ValueError(f"rate {text!r}: the count is 0: a rate allows at least 1 start")
    period_ms = number * _UNITS_MS[unit]
    if not 1 <= period_ms <= 86_400_000:
        raise ValueError(f"rate {text!r}: the period must be between 1 ms and a day")
    return pb.Rate(count=count, period_ms=period_ms)


class Throttle:
    """A throttle declaration: at most ``concurrency`` holders per identity,
    and with ``rate`` at most that many starts per period (``burst`` of them
    at once after a quiet spell, default 1).

    The identity is (task name, ``key``), with an empty key meaning the whole
    task name ("*"), or ``key`` alone when ``shared`` is true (one limit
    across task names, e.g. ``"tenant:42"``). ``scope`` says who holds a
    declared slot: one run (``"task"``, the default) or the chain through its
    remaining steps (``"chain"``); it has no meaning for an in-body
    throttle, whose slot is held by the ``with`` block.
    """

    __slots__ = ("concurrency", "key", "shared", "scope", "rate", "burst", "_held", "_lock")

    def __init__(
        self,
        concurrency: Optional[int] = None,
        key: str = "",
        shared: bool = False,
        scope: str = "task",
        rate: Optional[str] = None,
        burst: int = 1,
    ) -> None:
        parsed = None if rate is None else parse_rate(rate)
        if concurrency is None:
            # A rate alone limits no holders at once (0 tells the broker so).
            concurrency = 1 if parsed is None else 0
        elif isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"throttle concurrency must be an int >= 1 (got {concurrency!r})")
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise ValueError(f"throttle burst must be an int >= 1 (got {burst!r})")
        if parsed is None and burst != 1:
            raise ValueError("throttle burst needs a rate")
        if parsed is not None and burst > parsed.count:
            raise ValueError(f"throttle burst {burst} is more than the rate's count {parsed.count}")
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
        self.rate = rate
        self.burst = burst
        # Granted request ids per run, so one module-level throttle object can be
        # entered by many concurrent runs (and nested within one run).
        self._held: dict[TaskKey, list[int]] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        rate = "" if self.rate is None else f", rate={self.rate!r}, burst={self.burst}"
        return (
            f"throttle(concurrency={self.concurrency}, key={self.key!r}, "
            f"shared={self.shared}, scope={self.scope!r}{rate})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Throttle):
            return NotImplemented
        return self.to_pb() == other.to_pb()

    __hash__ = None  # type: ignore[assignment]

    def to_pb(self) -> pb.Throttle:
        out = pb.Throttle(
            concurrency=self.concurrency, key=self.key, shared=self.shared, scope=_SCOPES[self.scope]
        )
        if self.rate is not None:
            out.rate.CopyFrom(parse_rate(self.rate))
            out.rate.burst = self.burst
        return out

    def with_rate(self, rate: str, burst: int = 1) -> "Throttle":
        """A copy of this throttle with ``rate`` (as ``@app.task(rate=...)``
        adds one to a declared throttle)."""
        concurrency = None if self.concurrency == 0 else self.concurrency
        return Throttle(concurrency, self.key, self.shared, self.scope, rate, burst)

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
    *,
    concurrency: Optional[int] = None,
    key: str = "",
    shared: bool = False,
    scope: str = "task",
    rate: Optional[str] = None,
    burst: int = 1,
) -> Throttle: ...


def throttle(
    fn: Optional[F] = None,
    /,
    *,
    concurrency: Optional[int] = None,
    key: str = "",
    shared: bool = False,
    scope: str = "task",
    rate: Optional[str] = None,
    burst: int = 1,
) -> Union[F, Throttle]:
    """Build a :class:`Throttle`; used bare (``@throttle``) it decorates ``fn`` at once.

    ``@throttle`` alone means concurrency 1 for the whole task name, as in the
    seed; ``throttle(rate="10/s")`` at most 10 starts a second, any number at
    once. See the module documentation for the three forms.
    """
    spec = Throttle(
        concurrency=concurrency, key=key, shared=shared, scope=scope, rate=rate, burst=burst
    )
    if fn is not None:
        return spec(fn)
    return spec


def declared_on(fn: Callable[..., Any]) -> Optional[Throttle]:
    """The throttle a ``@throttle`` decorator left on ``fn``, if any."""
    found = getattr(fn, ATTRIBUTE, None)
    return found if isinstance(found, Throttle) else None
