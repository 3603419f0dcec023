"""Pipelined submission: ``delay()`` sends its ``SubmitChain`` and returns at once.

Why: the broker answers a submission only once the chain is on disk (a group
commit followed by an fdatasync). A loop of ``delay()`` calls that waited for
each answer would run at the disk's fsync rate. Instead the client picks the
chain id (a UUIDv4), sends the request without waiting and hands out an
``AsyncResult`` that already carries the final id. Many requests in flight
on one channel share the broker's group commits.

What does not change: a chain is stored only when its own answer is OK, and
whoever relies on that waits for the answer: ``AsyncResult.wait_stored()``
(which ``get()``, ``status()``... call first), ``Baton.flush()``, the exit
hook of this module, and the worker, which waits for the submissions a task
body made (:func:`stored_before_return`) before it reports the run's outcome.
A failure nobody is waiting for when it arrives is logged as a warning, so
no failed submission goes unnoticed.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import threading
import time
import weakref
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Iterator, List, Optional, Set

from . import pb

if TYPE_CHECKING:
    from .client import BrokerClient

log = logging.getLogger("baton.client")

MAX_IN_FLIGHT = 1024
"""Most submissions one app keeps in flight; the next ``delay()`` waits for a slot."""

MAX_UNSEEN_FAILURES = 1024
"""Most failures kept for ``flush()`` to raise. They are all logged when they
happen; the bound keeps a process that never flushes from growing without end."""


class Submission:
    """One ``SubmitChain`` request in flight, then its answer or its error."""

    def __init__(self, chain_id: str, seq: int) -> None:
        self.chain_id = chain_id
        self.seq = seq
        """Order of sending within the app: ``flush()`` raises the earliest failure."""
        self.response: Optional[pb.SubmitChainResponse] = None
        self.error: Optional[BaseException] = None
        self.observed = False
        """The error has been raised to someone (``wait()`` or ``flush()``)."""
        self._settled = False
        self._waiters = 0
        self._cond = threading.Condition(threading.Lock())

    def wait(self, timeout: Optional[float] = None) -> pb.SubmitChainResponse:
        """Block until the broker answered; return the answer or raise the call's error.

        Raises:
            grpc.RpcError: the broker refused the chain or could not be reached.
            TimeoutError: no answer within ``timeout`` seconds (the call goes on).
        """
        with self._cond:
            self._waiters += 1
            try:
                if not self._cond.wait_for(lambda: self._settled, timeout):
                    raise TimeoutError(f"chain {self.chain_id} was not acknowledged within {timeout}s")
            finally:
                self._waiters -= 1
        if self.error is not None:
            self.observed = True
            raise self.error
        assert self.response is not None
        return self.response

    def settled(self, timeout: Optional[float] = None) -> bool:
        """Wait for the answer without claiming its error (``flush()`` and exit use this)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._settled, timeout)

    def settle(self, response: Optional[pb.SubmitChainResponse], error: Optional[BaseException]) -> bool:
        """Record the answer; True when it is a failure that nobody waits for."""
        with self._cond:
            self.response, self.error, self._settled = response, error, True
            self._cond.notify_all()
            return error is not None and self._waiters == 0


def describe(error: BaseException) -> str:
    """``CODE: details`` for a gRPC error, the repr of anything else."""
    code = getattr(error, "code", None)
    details = getattr(error, "details", None)
    if callable(code) and callable(details):
        return f"{code().name}: {details()}"
    return repr(error)


class Pipeline:
    """The submissions of one app still in flight, and its failures not raised yet.

    Thread-safe: answers arrive on gRPC's threads, ``delay()`` may be called
    from any number of threads.
    """

    def __init__(self, limit: int = MAX_IN_FLIGHT) -> None:
        self._slots = threading.BoundedSemaphore(limit)
        self._lock = threading.Lock()
        self._in_flight: Set[Submission] = set()
        self._unseen: List[Submission] = []
        self._seq = itertools.count()
        self._watched = False

    def send(self, client: "BrokerClient", request: pb.SubmitChainRequest) -> Submission:
        """Send ``request`` (its ``chain_id`` set) without waiting for the answer.

        Blocks while ``limit`` submissions are in flight, until one is answered.
        """
        if not self._watched:
            _drain_at_exit(self)
            self._watched = True
        self._slots.acquire()
        submission = Submission(request.chain_id, next(self._seq))
        try:
            future = client.submit_future(request)
        except BaseException:
            self._slots.release()
            raise
        with self._lock:
            self._in_flight.add(submission)
        scope = _body_scope.get()
        if scope is not None:
            scope.append(submission)
        # Registered last: a call that already ended runs the callback here and now.
        future.add_done_callback(lambda f: self._answered(submission, f))
        return submission

    def _answered(self, submission: Submission, future: Any) -> None:
        """On a gRPC thread (or in ``send``): record the answer, free the slot.

        The submission is settled before it leaves ``_in_flight``, and it
        moves to ``_unseen`` in the same step, so a ``flush()`` finds every
        failure either among the submissions it waited for or in ``_unseen``.
        """
        try:
            response, error = future.result(), None
        except Exception as exc:  # grpc.RpcError; FutureCancelledError once the channel closed
            response, error = None, exc
        unwatched = submission.settle(response, error)
        with self._lock:
            self._in_flight.discard(submission)
            if error is not None and len(self._unseen) < MAX_UNSEEN_FAILURES:
                self._unseen.append(submission)
        self._slots.release()
        if unwatched and error is not None:
            log.warning("chain %s was not stored: %s", submission.chain_id, describe(error))

    def drain(self, timeout: Optional[float] = None) -> int:
        """Wait for the submissions in flight now; returns how many are still unanswered."""
        return self._wait_for(self._pending(), timeout)

    def _pending(self) -> List[Submission]:
        with self._lock:
            return list(self._in_flight)

    @staticmethod
    def _wait_for(submissions: List[Submission], timeout: Optional[float]) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        unanswered = 0
        for submission in submissions:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not submission.settled(remaining):
                unanswered += 1
        return unanswered

    def flush(self, timeout: Optional[float] = None) -> None:
        """Wait for the submissions in flight now, then raise the earliest failure
        not raised to anyone yet. The failures after it, logged when they
        happened, count as seen too: the next ``flush()`` reports only newer ones.

        Raises:
            grpc.RpcError: that failure, as the synchronous call raised it.
            TimeoutError: some were still unanswered after ``timeout`` seconds.
        """
        pending = self._pending()
        unanswered = self._wait_for(pending, timeout)
        if unanswered:
            raise TimeoutError(f"{unanswered} submission(s) still unanswered after {timeout}s")
        with self._lock:
            failed = {s.seq: s for s in self._unseen + pending if s.error is not None and not s.observed}
            self._unseen.clear()
        for submission in failed.values():
            submission.observed = True
        if failed:
            error = failed[min(failed)].error
            assert error is not None
            raise error


# -- submissions of a task body ---------------------------------------------------

_body_scope: ContextVar[Optional[List[Submission]]] = ContextVar("baton_body_submissions", default=None)


@contextmanager
def stored_before_return() -> Iterator[None]:
    """Around a task body: when it returns, wait until the chains it submitted are stored.

    A worker reports success only after this, so a step that submits a chain
    and returns its id hands on an id that exists, as when ``delay()`` waited
    for each answer. The first failed submission is raised, and the run fails
    with it, as it did when ``delay()`` raised in the body. A body that raised
    is not held up: its outcome is a failure anyway.
    """
    submissions: List[Submission] = []
    token = _body_scope.set(submissions)
    try:
        yield
    finally:
        _body_scope.reset(token)
    for submission in submissions:
        submission.wait()


# -- the exit hook ------------------------------------------------------------------

_pipelines: "weakref.WeakSet[Pipeline]" = weakref.WeakSet()
_hook_lock = threading.Lock()
_hook_registered = False


def _drain_at_exit(pipeline: Pipeline) -> None:
    """Have the interpreter's exit wait for ``pipeline``'s submissions.

    A script that ends right after its ``delay()`` loop must not drop the
    last requests. The hook is registered on the first pipelined submission,
    not at import, so importing the SDK stays free of side effects.
    """
    global _hook_registered
    with _hook_lock:
        if not _hook_registered:
            atexit.register(_drain_all)
            _hook_registered = True
        _pipelines.add(pipeline)


def _drain_all() -> None:
    for pipeline in list(_pipelines):
        pipeline.drain()
