"""Pipelined submission: ``delay()`` queues its chain and returns at once; the
queued chains travel to the broker together, as ``SubmitChains`` calls.

Why pipelined: the broker answers a submission only once the chain is on disk
(a group commit followed by an fdatasync). A loop of ``delay()`` calls that
waited for each answer would run at the disk's fsync rate. Instead the client
picks the chain id, queues the request and hands out an ``AsyncResult`` that
already carries the final id.

Why together: a gRPC call costs the calling process far more than a chain
does. A sync call is about 200 us of CPU (plus well under 1 us per chain it
carries), building a chain's request about 20 us: one ``SubmitChain`` per
``delay()`` held a loop to about 3,000 chains/s on two cores, at about
250 us of CPU per chain. So, as Nagle's algorithm does for TCP, a request
leaves at once when no call is in flight (a lone ``delay()`` waits for no
timer), and while one is, requests accumulate and leave together when it
ends: up to ``MAX_BATCH`` chains and ``MAX_BATCH_BYTES`` per call. A loop of
``delay()`` then costs about 45 us of CPU per chain, and the broker stores
each call with one commit. Whoever finds the way clear starts the call: the
thread calling ``delay()``, or the client's caller thread when it delivers an
answer. The call itself is made on that caller thread, blocking, one thread
for the process's life (:class:`baton.client._Caller`): grpc's own future
calls start and end a polling thread around every call made while no other
is in flight, which cost a lone ``delay()`` about 0.4 ms.

One call is in flight at a time (``MAX_CALLS``). That keeps the broker's
order that of the ``delay()`` calls, resends included (below): concurrent
calls are handled concurrently and may be stored in either order (so were
the ``SubmitChain`` calls of one per ``delay()``). More calls in flight would
overlap sending a batch with the broker's commit of the previous one, but
with 2 or 4 a loop's rate and CPU per chain were the same as with 1, within
the machine's noise: the loop builds the next batch while the call is in
flight anyway.

``SubmitChains`` stores all of its chains or none. When the broker refuses
one of them (details ``chains[i]: ...``), nothing was stored: that chain
fails with what a ``SubmitChain`` of it alone would have raised
(:class:`~baton.errors.SubmissionRefused`, a ``grpc.RpcError`` with the same
code and details) and the others are sent again, ahead of the queue, in their
order. Resending is safe: the ids are the client's, and the broker answers an
id it stored already as a repeat (dedup ``chain_id``) instead of storing it
twice. A call too large for the broker (``RESOURCE_EXHAUSTED`` naming
``--max-payload``, or ``OUT_OF_RANGE`` from older brokers: one run with
a ``--max-payload`` below the default) is sent again in calls half its size,
down to a chain alone, which then fails as it would alone. A call cut off by
a lost connection (``UNAVAILABLE``: the broker crashed or restarted while it
was in flight, so some of its chains may be stored and some not) is sent
again, up to ``UNAVAILABLE_RESENDS`` times: each call waits for the broker
to be ready again (``wait_for_ready``, bounded by the client's timeout), and
the broker answers the chains it had stored as repeats. Any other failure is
the failure of each chain of the call.

Given several brokers, a call that a standby refused or that could not reach
its broker (it stored nothing) is sent again at the leader the standby named
or at the next address, as the client's own calls are (see
:class:`~baton.client.BrokerClient`): a round of the addresses in which no
standby answered fails its chains; while standbys answer it goes on for up
to 30 s, pausing 0.1 s after each round on a timer thread.

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
import re
import threading
import time
import weakref
from collections import deque
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Deque, Iterator, List, Optional, Sequence, Set, Tuple, cast

import grpc

from . import _failover, pb
from .errors import BatonError, SubmissionRefused

if TYPE_CHECKING:
    from .client import BrokerClient

log = logging.getLogger("baton.client")

MAX_IN_FLIGHT = 1024
"""Most chains one app has queued or in flight; the next ``delay()`` waits for room."""

MAX_CALLS = 1
"""Most ``SubmitChains`` calls one app has in flight (see the module's docstring)."""

MAX_BATCH = 1000
"""Most chains in one call (the broker's limit)."""

MAX_BATCH_BYTES = 512 * 1024
"""Largest encoded call, about: half the broker's default request limit
(``--max-payload``, 1 MiB). A request larger on its own goes alone, and the
broker judges it as it would judge it alone."""

UNAVAILABLE_RESENDS = 3
"""How many times a chain cut off by a lost connection is sent again before
its ``UNAVAILABLE`` is its failure (each send waits for the broker to be
ready again, up to the client's timeout)."""

MAX_UNSEEN_FAILURES = 1024
"""Most failures kept for ``flush()`` to raise. They are all logged when they
happen; the bound keeps a process that never flushes from growing without end."""

_REFUSED_CHAIN = re.compile(r"chains\[(\d+)\]: (.*)", re.DOTALL)


class Submission:
    """One chain's request, queued or in flight, then its answer or its error.

    Settled under its pipeline's lock, which its waiters share: settling a
    call's thousand chains takes the lock once, and a chain nobody waits for
    costs no condition of its own.
    """

    __slots__ = ("chain_id", "seq", "request", "size", "response", "error", "observed", "resends",
                 "since", "_settled", "_lock", "_cond", "_waiters")

    def __init__(self, request: pb.SubmitChainRequest, lock: threading.Lock) -> None:
        self.chain_id: str = request.chain_id
        self.seq = 0
        """Order of sending within the app: ``flush()`` raises the earliest failure."""
        self.request: Optional[pb.SubmitChainRequest] = request
        """Kept until settled: a refused neighbour may have it sent again."""
        self.size = request.ByteSize() + 4  # within SubmitChains: its tag and length too
        self.response: Optional[pb.SubmitChainResponse] = None
        self.error: Optional[BaseException] = None
        self.observed = False
        """The error has been raised to someone (``wait()`` or ``flush()``)."""
        self.resends = 0
        """Times it was sent again after a lost connection cut its call off."""
        self.since: Optional[float] = None
        """When a call of it was first refused by a standby or found no broker
        (``time.monotonic()``): bounds how long it follows the leader."""
        self._settled = False
        self._lock = lock
        self._cond: Optional[threading.Condition] = None
        self._waiters = 0

    def wait(self, timeout: Optional[float] = None) -> pb.SubmitChainResponse:
        """Block until the broker answered; return the answer or raise the call's error.

        Raises:
            grpc.RpcError: the broker refused the chain or could not be reached.
            TimeoutError: no answer within ``timeout`` seconds (the call goes on).
        """
        if not self._wait(timeout):
            raise TimeoutError(f"chain {self.chain_id} was not acknowledged within {timeout}s")
        if self.error is not None:
            self.observed = True
            raise self.error
        assert self.response is not None
        return self.response

    def settled(self, timeout: Optional[float] = None) -> bool:
        """Wait for the answer without claiming its error (``flush()`` and exit use this)."""
        return self._wait(timeout)

    def _wait(self, timeout: Optional[float]) -> bool:
        if self._settled:
            return True
        with self._lock:
            if self._cond is None:
                self._cond = threading.Condition(self._lock)
            self._waiters += 1
            try:
                return self._cond.wait_for(lambda: self._settled, timeout)
            finally:
                self._waiters -= 1

    def _settle(self, response: Optional[pb.SubmitChainResponse], error: Optional[BaseException]) -> bool:
        """Record the answer, the lock held; True when it is a failure nobody waits for."""
        self.response, self.error, self._settled = response, error, True
        self.request = None
        if self._cond is not None:
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
    """The submissions of one app queued or in flight, and its failures not raised yet.

    Thread-safe: answers arrive on the client's caller thread, ``delay()`` may be called
    from any number of threads.
    """

    def __init__(self, limit: int = MAX_IN_FLIGHT, calls: int = MAX_CALLS) -> None:
        self._limit = limit
        self._max_calls = calls
        self._batch_bytes = MAX_BATCH_BYTES
        """Lowered when the broker finds a call too large (its limit is smaller)."""
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        """Notified when chains settle, for a ``send()`` waiting below ``limit``."""
        self._queue: Deque[Submission] = deque()
        self._in_flight: Set[Submission] = set()
        """Queued or in a call: what ``drain()`` and ``flush()`` wait for."""
        self._calls = 0
        self._sending = threading.Lock()
        """Held by whoever takes batches off the queue and starts their calls,
        so that the calls start in the order of the queue."""
        self._unseen: List[Submission] = []
        self._seq = itertools.count()
        self._watched = False

    def send(self, client: "BrokerClient", request: pb.SubmitChainRequest) -> Submission:
        """Queue ``request`` (its ``chain_id`` set) and return without waiting for the answer.

        Sends it at once if the way is clear (see the module's docstring).
        Blocks while ``limit`` chains are queued or in flight, until one is answered.
        """
        if not self._watched:
            _drain_at_exit(self)
            self._watched = True
        submission = Submission(request, self._lock)
        with self._lock:
            while len(self._in_flight) >= self._limit:
                self._room.wait()
            submission.seq = next(self._seq)
            self._queue.append(submission)
            self._in_flight.add(submission)
            # Else the call in flight, when it ends, sends what is queued.
            way_clear = self._calls < self._max_calls
        scope = _body_scope.get()
        if scope is not None:
            scope.append(submission)
        if way_clear:
            self._pump(client)
        return submission

    # -- sending ------------------------------------------------------------------

    def _pump(self, client: "BrokerClient") -> None:
        """Start calls for what is queued while fewer than ``calls`` are in flight.

        Whoever finds ``_sending`` taken leaves the work to its holder, who
        looks at the queue again after letting go, so no request is left
        behind in the queue with nobody to send it.
        """
        while self._sending.acquire(blocking=False):
            try:
                while True:
                    with self._lock:
                        if not self._queue or self._calls >= self._max_calls:
                            break
                        batch = self._take()
                        self._calls += 1
                    self._start(client, batch)
            finally:
                self._sending.release()
            with self._lock:
                if not self._queue or self._calls >= self._max_calls:
                    return

    def _take(self) -> List[Submission]:
        """The head of the queue, up to ``MAX_BATCH`` chains and the byte budget (the lock held)."""
        queue = self._queue
        first = queue.popleft()
        batch, size = [first], first.size
        while queue and len(batch) < MAX_BATCH and size + queue[0].size <= self._batch_bytes:
            size += queue[0].size
            batch.append(queue.popleft())
        return batch

    def _start(self, client: "BrokerClient", batch: List[Submission]) -> None:
        address = client.current
        try:
            future = client.submit_many_future([cast(pb.SubmitChainRequest, s.request) for s in batch], address)
        except Exception as exc:  # a closed channel: each chain fails with it
            self._answered(client, address, batch, None, exc)
            return
        # A call that already ended runs the callback here and now.
        future.add_done_callback(lambda f: self._answered(client, address, batch, f))

    # -- answers ------------------------------------------------------------------

    def _answered(
        self,
        client: "BrokerClient",
        address: str,
        batch: List[Submission],
        future: Any,
        error: Optional[BaseException] = None,
    ) -> None:
        """On the caller thread (or the sender's): settle the call's chains, send what is next.

        A settled chain leaves ``_in_flight`` and, if it failed, joins
        ``_unseen`` in the same step, so a ``flush()`` finds every failure
        either among the submissions it waited for or in ``_unseen``.
        """
        responses: Sequence[pb.SubmitChainResponse] = ()
        if error is None:
            try:
                responses = future.result().chains
            except Exception as exc:  # grpc.RpcError; FutureCancelledError once the channel closed
                error = exc
        if error is None and len(responses) != len(batch):
            error = BatonError(f"the broker answered {len(responses)} chains of a call of {len(batch)}")
        if error is None:
            client.succeeded(address)
        pause = 0.0
        settled: List[Tuple[Submission, Any, Optional[BaseException]]]
        resend: List[Submission]
        if error is not None and _failover.elsewhere(error):
            # Nothing was stored: to the broker now current, or a failure
            # once a round of the addresses ends it (see the module doc).
            since = next((s.since for s in batch if s.since is not None), time.monotonic())
            for s in batch:
                s.since = since
            following = client.failed_at(address, error, since)
            if following is None:
                settled, resend = [(s, None, error) for s in batch], []
            else:
                settled, resend, pause = [], batch, following
        else:
            settled, resend = self._outcomes(batch, responses, error)

        unwatched: List[Tuple[str, BaseException]] = []
        with self._lock:
            self._calls -= 1
            for submission, response, failure in settled:
                if submission._settle(response, failure):
                    assert failure is not None
                    unwatched.append((submission.chain_id, failure))
                self._in_flight.discard(submission)
                if failure is not None and len(self._unseen) < MAX_UNSEEN_FAILURES:
                    self._unseen.append(submission)
            self._queue.extendleft(reversed(resend))
            if settled:
                self._room.notify_all()
        for chain_id, failure in unwatched:
            log.warning("chain %s was not stored: %s", chain_id, describe(failure))
        if pause > 0:
            timer = threading.Timer(pause, self._pump, (client,))
            timer.daemon = True
            timer.start()
        else:
            self._pump(client)

    def _outcomes(
        self,
        batch: List[Submission],
        responses: Sequence[pb.SubmitChainResponse],
        error: Optional[BaseException],
    ) -> Tuple[List[Tuple[Submission, Any, Optional[BaseException]]], List[Submission]]:
        """What a call's answer means for each chain: settled how, or to be sent again."""
        if error is None:
            return [(s, r, None) for s, r in zip(batch, responses)], []
        refused = _refused_chain(error, len(batch))
        if refused is not None:
            index, details = refused
            assert isinstance(error, grpc.RpcError)
            return [(batch[index], None, SubmissionRefused(error, details))], batch[:index] + batch[index + 1:]
        if len(batch) > 1 and _too_large(error):
            size = sum(s.size for s in batch)
            with self._lock:
                self._batch_bytes = min(self._batch_bytes, max(1, size // 2))
            log.info("a call of %d chains (%d bytes) was too large for the broker: "
                     "sending calls of at most %d bytes", len(batch), size, self._batch_bytes)
            return [], batch
        if _code(error) == grpc.StatusCode.UNAVAILABLE and all(s.resends < UNAVAILABLE_RESENDS for s in batch):
            for s in batch:
                s.resends += 1
            log.info("a call of %d chains was cut off (%s): sending it again", len(batch), describe(error))
            return [], batch
        return [(s, None, error) for s in batch], []

    # -- waiting --------------------------------------------------------------------

    def drain(self, timeout: Optional[float] = None) -> int:
        """Wait for the submissions queued or in flight now; returns how many are still unanswered."""
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
        """Wait for the submissions queued or in flight now, then raise the earliest
        failure not raised to anyone yet. The failures after it, logged when they
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


def _code(error: BaseException) -> Optional[grpc.StatusCode]:
    code = getattr(error, "code", None)
    return code() if callable(code) else None


def _too_large(error: BaseException) -> bool:
    """Whether the broker refused a call for being over its message limit.

    ``RESOURCE_EXHAUSTED`` also means a full disk: the broker's message for
    a call too large names the option that sets the limit.
    """
    code = _code(error)
    if code == grpc.StatusCode.OUT_OF_RANGE:
        return True
    details = getattr(error, "details", None)
    return (
        code == grpc.StatusCode.RESOURCE_EXHAUSTED
        and callable(details)
        and "per message: --max-payload" in (details() or "")
    )


def _refused_chain(error: BaseException, count: int) -> Optional[Tuple[int, str]]:
    """``(i, details)`` when ``error`` is the broker's refusal of ``chains[i]`` alone."""
    details = getattr(error, "details", None)
    if not isinstance(error, grpc.RpcError) or not callable(details) or _code(error) is None:
        return None
    match = _REFUSED_CHAIN.match(details() or "")
    if match is None or int(match.group(1)) >= count:
        return None
    return int(match.group(1)), match.group(2)


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
