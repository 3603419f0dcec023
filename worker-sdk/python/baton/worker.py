"""The worker: one ``Worker.Session`` stream to the broker, task bodies beside it.

Layout of a worker process:

* the **session loop** (the thread that calls :meth:`Worker.run`) owns the
  stream and all bookkeeping: runs in flight, outcomes not yet acknowledged,
  throttle requests. Only this loop touches that state; other threads reach
  it through ``call_soon_threadsafe``.
* plain functions run in a **thread pool** of ``concurrency`` threads
  (reused threads, so per-thread resources such as Django's database
  connections are reused as under Celery), which hands finished runs back
  to the session loop in bulk (:class:`_Pool`); or, with ``pool="processes"``,
  in ``concurrency`` child processes (:mod:`baton._processes`), whose
  sockets the session loop reads;
* ``async def`` tasks run on a **separate event loop thread**, so a
  coroutine that blocks by mistake cannot stall heartbeats and lose the
  worker's leases.

Messages go both ways in batches when both ends allow it (``Hello.batch_bytes``,
``Welcome.batch_bytes``): every message grpc.aio moves costs an event-loop
round trip, so what is ready at the same time travels as one frame
(:class:`_Outbox` up, :meth:`Worker._read` down), and an outcome waits up
to 0.3 ms for the runs started with it (:data:`OUTCOME_LINGER`).

The worker decides nothing about scheduling: it runs what the broker assigns
(never more than its free concurrency), reports how each run ended, and keeps
its leases alive with heartbeats. Recovery follows the protocol: an outcome
is kept until the broker acknowledges it (it is durable then), and after a
lost connection the worker reconnects with backoff (to the leader, given
several brokers: :mod:`baton._failover`), lists what it still
holds in ``Hello.held`` and re-sends the unacknowledged outcomes the broker
says it still owns (``Welcome.kept``).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import itertools
import logging
import os
import queue
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Deque, Iterable, Optional, Tuple, Union

import grpc
import grpc.aio

from . import _failover, _json, _transport, options as _options, outcomes, pb
from ._processes import ProcessPool
from .client import PHASES
from .context import TaskContext, TaskKey
from .errors import Cancelled, ThrottleError, ThrottleRefused, WorkerConfigError

if TYPE_CHECKING:
    from .app import Baton

log = logging.getLogger("baton.worker")

BACKOFF_MIN = 0.1
BACKOFF_MAX = 2.0
WELCOME_TIMEOUT = 10.0
GOODBYE_TIMEOUT = 5.0
OUTCOME_LINGER = 0.0003
"""Longest an outcome waits, after the youngest run in flight started, for
the runs still going to end too, so that their outcomes leave in one frame.

Why: the broker assigns what is free at once, so runs start in groups; without
waiting, the first outcome of a group leaves alone and the group splits for
good (each half acknowledged and reassigned on its own), doubling the frames
per run, the cost that limits a worker with short tasks. Runs in flight for
longer than this are not waited for, so a long task does not hold back the
outcomes of short ones. Nor is an outcome held longer than this after it was
queued, though runs keep starting (a prefetching worker starts one as each
ends): the worst an outcome waits is this plus the event loop's timer
resolution (1 ms).

Why 0.3 ms: since the broker sends the next assignments as soon as it has
the outcomes (early assignments), the wait here is most of the time between
a group's last run and the next group's first. At 2 x 4 with prefetch 12,
0.3 ms gave more no-op tasks per second than 1 ms in 7 of 8 paired
measurements (docs/benchmarks-log.md, "Early assignments"), and 0 gave fewer,
with more CPU in the workers (groups split).
"""
SHORT_RUN = 0.0002
"""A plain function whose last run took less (seconds) is short: its next
job waits for a thread already awake rather than waking one (see :class:`_Pool`)."""
SPARE_DELAY = 0.001
"""How long the awake threads may take no job, while such a job waits, before
idle ones are woken for the jobs queued (plus the event loop's timer
resolution, 1 ms)."""
POOLS = ("threads", "processes")
"""What runs plain task bodies: ``threads`` (the default) or ``processes`` (see :mod:`baton._processes`)."""
AUTO_PREFETCH_PER_SLOT = 7
"""The default window (``prefetch=None``) starts at this many assignments per
unit of concurrency beyond it, so a window of 8 per slot (Celery's default is
4 x concurrency), and never goes below it. See :func:`auto_prefetch`."""
AUTO_PREFETCH_MAX_PER_SLOT = 31
"""The default window grows to at most this many per unit of concurrency (32
per slot) while the runs are short (see :func:`adapted_window`)..."""
AUTO_PREFETCH_MAX = 256
"""...and to at most this many in all, unless its floor is higher."""
WINDOW_WAIT = 0.02
"""The default window grows to what the worker finishes in this long
(seconds) at its pace of the last :data:`WINDOW_CHECK`: so a run waits about
this long in a window it grew, behind the runs before it."""
LONG_RUN = 1.0
"""Seconds after which a body counts as long. When every run slot of a worker
holds a body running longer than this, the worker closes its window and gives
back the assignments it holds unstarted (see :meth:`Worker._check_window`), so
that a long task never holds short ones waiting behind it for more than about
this plus :data:`WINDOW_CHECK`."""
WINDOW_CHECK = 0.25
"""How often (seconds) the session loop looks for long bodies in every slot."""
LONG_QUEUES = frozenset({"heavy"})
"""Queues of long tasks by convention (``@app.task(heavy=True)``): a worker
that takes any of them prefetches nothing by default."""
READ_BATCH_BYTES = 1 << 20
"""``Hello.batch_bytes``: the largest BrokerBatch this worker asks for. grpc's
default receive limit is 4 MB, so 1 MiB batches stay well inside it."""

# Statuses that no reconnect can fix: the broker refused this worker itself.
_FATAL_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
    }
)


def auto_prefetch(concurrency: int, queues: Iterable[str]) -> int:
    """The default prefetch of a worker: :data:`AUTO_PREFETCH_PER_SLOT` x
    ``concurrency``, or 0 for a worker of a queue in :data:`LONG_QUEUES`.

    Why it hurts no one (docs/prefetch.md has the whole policy): the broker
    sends a task that holds a throttle slot only to a free run slot, never
    into the window; a prefetched run is held behind the bodies in progress
    only while every one of the worker's slots is busy, and long tasks are
    routed to the heavy queue, whose workers hold no window.
    """
    if LONG_QUEUES.intersection(queues):
        return 0
    return AUTO_PREFETCH_PER_SLOT * concurrency


def adapted_window(current: int, finished: int, period: float, concurrency: int) -> int:
    """The default window after a period of ``period`` seconds in which
    ``finished`` runs ended: what the worker finishes in :data:`WINDOW_WAIT`
    at that pace, no less than :func:`auto_prefetch`'s window and no more than
    :data:`AUTO_PREFETCH_MAX_PER_SLOT` per slot (:data:`AUTO_PREFETCH_MAX` in
    all). ``current`` is kept unless the new window differs from it by more
    than a quarter, so that a steady pace does not send a ``Window`` every
    check.

    Why: with short tasks a bigger window means bigger frames and fewer of
    them each way, and less CPU per task in the worker and the broker (two
    Python workers at ``-c 2``: about 10,700 no-op tasks/s at 8 per slot,
    12,500 at 16, 13,000-15,000 at 32). With longer ones it would only hold
    more tasks away from other workers, so the window follows the pace: a run
    waits in a grown window about :data:`WINDOW_WAIT` at most.
    """
    floor = AUTO_PREFETCH_PER_SLOT * concurrency
    ceiling = max(floor, min(AUTO_PREFETCH_MAX_PER_SLOT * concurrency, AUTO_PREFETCH_MAX))
    pace = finished / period if period > 0 else 0.0
    target = min(ceiling, max(floor, int(pace * WINDOW_WAIT)))
    if abs(target - current) * 4 <= current:
        return current
    return target


class _SessionLost(Exception):
    """The stream ended or misbehaved; reconnect."""


def _ref(key: TaskKey) -> pb.TaskRef:
    return pb.TaskRef(task_id=key[0], attempt=key[1])


def _key(ref: pb.TaskRef) -> TaskKey:
    return (ref.task_id, ref.attempt)


@dataclass(eq=False)
class _Run:
    """One assignment being executed. Mutated on the session loop only,
    except ``atask``, which lives on the async task loop."""

    key: TaskKey
    ctx: TaskContext
    started: float = field(default_factory=time.monotonic)
    cancelled: bool = False
    """The broker sent Cancel: report ``Cancelled`` whatever the body returns."""
    lost: bool = False
    """The broker no longer considers this run current: report nothing."""
    ended: bool = False
    waiters: dict[int, "tuple[pb.Throttle, asyncio.Future[None]]"] = field(default_factory=dict)
    """In-body throttle requests sent and not yet granted, by request id."""
    slots: dict[int, pb.Throttle] = field(default_factory=dict)
    """In-body throttle slots granted and not yet released, by request id."""
    is_async: bool = False
    atask: "Optional[asyncio.Task[Any]]" = None
    cancel_requested: bool = False
    launched: bool = False
    """Its body was handed to the pool or the task loop (a prefetched run
    waits in ``Worker._waiting`` until a slot frees, unless it goes straight
    to the pool: see ``Worker._slots``)."""
    job: "Optional[_Job]" = None
    """Its job while queued in the pool, so that :meth:`_Pool.withdraw` can
    take it back before a thread does."""


_Job = Tuple[_Run, Callable[..., Any], "list[Any]", "dict[str, Any]"]


class _Pool:
    """``size`` reused threads that run plain task bodies for the session loop.

    Why not ``loop.run_in_executor``: per run it builds a
    ``concurrent.futures.Future`` and an asyncio future chained to it, and
    wakes the session loop once; with no-op tasks that was about a sixth of
    the session loop's time, the loop being what limits a worker. Here a
    run is one append to a queue; a finished run is put on another, and a
    thread wakes the session loop only when no wake-up is pending already,
    so one wake-up hands back every run finished meanwhile.
    ``on_done(run, outcome)`` is called on the session loop.

    Waking a thread is the dearest part of a short run: a context switch,
    then the woken thread contends for the GIL with the session loop (with
    no-op tasks, four threads cost a fifth more CPU per run than one). So a
    job of a short function (its last run took under :data:`SHORT_RUN`)
    wakes no thread while one is awake and free soon (between jobs, or
    running a short function): that thread takes it when its current body
    returns, sooner than a woken one would start. Should that body not
    return soon after all, the session loop wakes idle threads for the jobs
    still queued once :data:`SPARE_DELAY` passed with no job taken. (Not
    merely because jobs are still queued: a worker that prefetches queues
    many short jobs at once, and while the awake threads get through them,
    waking the others only makes them fight over the GIL, each body's
    ``write`` handing it over: 5-10% more CPU per no-op run.) Any other job wakes an idle
    thread at once, so bodies that take time start side by side as soon as
    they are assigned, as in any thread pool.
    """

    def __init__(
        self, size: int, loop: asyncio.AbstractEventLoop, on_done: Callable[[_Run, pb.Outcome], None]
    ) -> None:
        self._loop = loop
        self._on_done = on_done
        self._jobs: "Deque[Optional[_Job]]" = collections.deque()  # None stops a thread
        self._mutex = threading.Lock()
        self._sleeping: "list[threading.Lock]" = []
        """The idle threads' gates, each held while its thread sleeps on it (under _mutex)."""
        self._free_soon = size
        """Threads awake and not running a long body: they take the next job soon (under _mutex)."""
        self._last_run: "dict[Callable[..., Any], float]" = {}
        """Seconds the last run of each function took (set by the threads)."""
        self._spare_timer: Optional[asyncio.TimerHandle] = None
        self._taken = 0
        """Jobs the threads have taken so far (a progress mark, for :meth:`_wake_spares`)."""
        self._taken_when_armed = 0
        self._done: "queue.SimpleQueue[tuple[_Run, pb.Outcome]]" = queue.SimpleQueue()
        self._wake_pending = False
        # Daemon threads: a forced exit must not wait for a body that never returns.
        self._threads = [
            threading.Thread(target=self._serve, name=f"baton-task_{i}", daemon=True) for i in range(size)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, run: _Run, fn: Callable[..., Any], args: list[Any], kwargs: dict[str, Any]) -> None:
        """On the session loop. Jobs start in submission order, at most
        ``size`` at once: the pool may be given more jobs than threads."""
        job = run.job = (run, fn, args, kwargs)
        self._jobs.append(job)
        with self._mutex:
            left = self._free_soon > 0 and self._short(fn)
            if not left:
                if self._sleeping:
                    self._wake_one()
                return
        if self._spare_timer is None:
            self._arm_spare_timer()

    def withdraw(self, run: _Run) -> bool:
        """On the session loop: take back ``run``'s job if no thread took it
        yet (True), so that it never starts."""
        job = run.job
        if job is None:
            return False  # a thread has it
        try:
            # Atomic under the GIL: the tuples' comparisons run no Python
            # code (a _Run compares by identity), so no thread can pop the
            # job in the middle; either this removes it or a thread had it.
            self._jobs.remove(job)
        except ValueError:
            return False
        return True

    def _short(self, fn: Callable[..., Any]) -> bool:
        return self._last_run.get(fn, SHORT_RUN) < SHORT_RUN

    def _wake_one(self) -> None:
        """Under _mutex."""
        self._sleeping.pop().release()
        self._free_soon += 1

    def _arm_spare_timer(self) -> None:
        self._taken_when_armed = self._taken
        self._spare_timer = self._loop.call_later(SPARE_DELAY, self._wake_spares)

    def _wake_spares(self) -> None:
        """On the session loop, SPARE_DELAY after a job was left to a thread
        already awake: idle threads for the jobs still queued, unless the
        awake threads took jobs meanwhile (then look again later)."""
        self._spare_timer = None
        if not self._jobs:
            return
        if self._taken != self._taken_when_armed:
            self._arm_spare_timer()
            return
        with self._mutex:
            for _ in range(min(len(self._jobs), len(self._sleeping))):
                self._wake_one()

    @staticmethod
    def cancel(run: _Run, reason: str) -> None:
        """Nothing to forward: the body's thread reads ``run.ctx``'s cancel state itself."""

    def shutdown(self, wait: bool) -> None:
        """Stop the threads once they are idle; with ``wait``, join them."""
        if self._spare_timer is not None:
            self._spare_timer.cancel()
        for _ in self._threads:
            self._jobs.append(None)
        with self._mutex:
            while self._sleeping:
                self._wake_one()
        if wait:
            for thread in self._threads:
                thread.join()

    def _serve(self) -> None:
        gate = threading.Lock()
        gate.acquire()
        jobs = self._jobs
        while True:
            try:
                job = jobs.popleft()
            except IndexError:
                with self._mutex:
                    if jobs:
                        continue  # queued since: take it
                    self._free_soon -= 1
                    self._sleeping.append(gate)
                gate.acquire()  # until _wake_one releases it
                continue
            if job is None:
                return
            run, fn, args, kwargs = job
            self._taken += 1  # threads may race here and count one job for two: a change is all that matters
            run.job = None  # no reference cycle left for the garbage collector
            long = not self._short(fn)
            if long:
                with self._mutex:
                    self._free_soon -= 1
            run.started = time.monotonic()
            started = time.perf_counter()
            try:
                outcome = outcomes.run_sync(fn, run.ctx, args, kwargs)
            except BaseException as exc:  # run_sync reports every ending itself: a bug of ours
                outcome = outcomes.worker_error(exc)
            self._last_run[fn] = time.perf_counter() - started
            if long:
                with self._mutex:
                    self._free_soon += 1
            self._done.put((run, outcome))
            if not self._wake_pending:
                self._wake_pending = True
                try:
                    self._loop.call_soon_threadsafe(self._hand_back)
                except RuntimeError:
                    return  # the session loop is closed: the worker stopped without waiting for us

    def _hand_back(self) -> None:
        """On the session loop: every run finished since the last hand-back."""
        self._wake_pending = False  # first: a run put after this point schedules another hand-back
        if self._spare_timer is not None and not self._jobs:
            self._spare_timer.cancel()  # every job was taken: no thread to wake
            self._spare_timer = None
        while True:
            try:
                run, outcome = self._done.get_nowait()
            except queue.Empty:
                return
            self._on_done(run, outcome)


class _TaskLoop:
    """An event loop in its own thread for ``async def`` task bodies."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name="baton-async-tasks", daemon=True)

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self.loop.close()


class _Traffic:
    """Messages and frames the worker sent and read, over all its streams
    (logged when it stops; a frame carrying several messages is a batch)."""

    __slots__ = ("messages_sent", "frames_sent", "messages_read", "frames_read")

    def __init__(self) -> None:
        self.messages_sent = 0
        self.frames_sent = 0
        self.messages_read = 0
        self.frames_read = 0


def _varint_size(n: int) -> int:
    """Bytes of ``n`` as a protobuf varint."""
    size = 1
    while n >= 0x80:
        n >>= 7
        size += 1
    return size


def _take_frame(pending: "Deque[pb.WorkerMessage]", batch_bytes: int) -> pb.WorkerMessage:
    """Remove the messages of the next frame from the front of ``pending`` (not
    empty) and return that frame.

    With ``batch_bytes`` 0 (the broker reads no batch, or has not said yet)
    the frame is the first message. Otherwise it is a ``WorkerBatch`` of as
    many messages as fit in ``batch_bytes`` (counting the whole frame, the
    batch's own tag and length included); a frame of one message is that
    message, unwrapped, which is also how a message too big for any batch
    leaves. Order is kept: frames are taken from the front.
    """
    if batch_bytes == 0 or len(pending) == 1:
        return pending.popleft()
    # The frame is the batch's tag (1 byte), its length, and the batch; the
    # batch is each message's tag (1 byte), length and bytes.
    budget = batch_bytes - 1 - _varint_size(batch_bytes)
    size = 0
    count = 0
    for msg in pending:
        n = msg.ByteSize()
        size += 1 + _varint_size(n) + n
        if size > budget:
            break
        count += 1
    if count <= 1:
        return pending.popleft()
    return pb.WorkerMessage(batch=pb.WorkerBatch(messages=[pending.popleft() for _ in range(count)]))


class _Outbox:
    """The messages waiting to go up one stream, and the generator grpc takes
    them from (:meth:`frames`).

    Why not an ``asyncio.Queue`` of messages: grpc.aio writes one message
    at a time, and each write costs event-loop round trips through its
    poller thread. Here everything queued while the previous write was in
    flight (typically the outcomes of every run that finished meanwhile)
    leaves as one frame, once the Welcome set :attr:`batch_bytes`. Before
    that, and with a broker that reads no batch, messages leave one by
    one; the Hello, queued first, always leaves alone.

    Outcomes may also wait a little for each other (:attr:`linger`), see
    :data:`OUTCOME_LINGER`; any other message, and closing, sends at once
    everything queued.
    """

    def __init__(self, traffic: _Traffic) -> None:
        self.batch_bytes = 0
        """``Welcome.batch_bytes`` once welcomed: the largest batch the broker reads (0: none)."""
        self.linger: Optional[Callable[[], float]] = None
        """Set with batches: how many more seconds queued outcomes should wait (<= 0: none)."""
        self._traffic = traffic
        self._pending: "Deque[pb.WorkerMessage]" = collections.deque()
        self._wakeup: "Optional[asyncio.Future[None]]" = None
        self._urgent = False
        self._closed = False
        self._queued_at = 0.0
        """When the oldest message still queued was put (monotonic seconds)."""

    def put(self, msg: pb.WorkerMessage, urgent: bool = True) -> None:
        """Queue ``msg``; an outcome is put with ``urgent=False``: it may linger."""
        if not self._pending:
            self._queued_at = time.monotonic()
        self._pending.append(msg)
        if urgent:
            self._urgent = True
        self._wake()

    def close(self) -> None:
        """End the stream (half-close) once everything queued has left."""
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._wakeup
        if waiter is not None:
            self._wakeup = None
            if not waiter.done():
                # Resumes frames() on a later turn of the loop, so the rest
                # of this turn's messages join the same frame.
                waiter.set_result(None)

    async def frames(self) -> AsyncIterator[pb.WorkerMessage]:
        """The request iterator of the stream: one frame per resumption."""
        loop = asyncio.get_running_loop()
        pending = self._pending
        traffic = self._traffic
        while True:
            if not pending:
                if self._closed:
                    return
                await self._wait(loop, None)
                continue
            if not self._urgent and not self._closed and self.linger is not None:
                delay = min(self.linger(), self._queued_at + OUTCOME_LINGER - time.monotonic())
                if delay > 0:
                    await self._wait(loop, delay)  # or until the next message
                    continue
            before = len(pending)
            frame = _take_frame(pending, self.batch_bytes)
            if not pending:
                self._urgent = False
            else:
                self._queued_at = time.monotonic()  # what is left waits from now on
            traffic.messages_sent += before - len(pending)
            traffic.frames_sent += 1
            yield frame

    async def _wait(self, loop: asyncio.AbstractEventLoop, timeout: Optional[float]) -> None:
        """Until a message is put or the outbox closed, or ``timeout`` seconds passed."""
        self._wakeup = loop.create_future()
        timer = None if timeout is None else loop.call_later(timeout, self._wake)
        try:
            await self._wakeup
        finally:
            if timer is not None:
                timer.cancel()


class Worker:
    """Runs an app's tasks for the broker until drained.

    ``queues`` are the queues to take tasks from (default ``["general"]``);
    ``concurrency`` is how many tasks run at once. ``prefetch`` is how many
    more assignments the broker may send: they wait here until a run ends,
    so a worker of many short tasks never idles for the round trip and
    durable commit that bring the next one. They are this worker's from
    assignment: their leases and timeouts run, and a drain runs them too.
    ``None`` (the default) is :func:`auto_prefetch`: 7 x ``concurrency``,
    growing to up to 31 x while the runs are short (:func:`adapted_window`),
    or 0 for a worker of the heavy queue; 0 turns the window off (Celery's
    ``worker_prefetch_multiplier=4`` is ``prefetch=3 * concurrency``). The
    attribute ``prefetch`` is the window announced now.
    ``pool`` says where plain bodies run: ``"threads"`` (the default), or
    ``"processes"``, ``concurrency`` child processes (:mod:`baton._processes`),
    for CPU-bound bodies. Every task registered on
    the app is announced with its declared options, so the broker applies
    routing and throttles declared in ``@app.task(...)`` even to chains
    submitted by code that does not know them.
    """

    def __init__(
        self,
        app: "Baton",
        *,
        queues: Optional[Iterable[str]] = None,
        concurrency: int = 1,
        name: Optional[str] = None,
        prefetch: Optional[int] = None,
        pool: str = "threads",
    ) -> None:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"concurrency must be an int >= 1 (got {concurrency!r})")
        if prefetch is not None and (isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 0):
            raise ValueError(f"prefetch must be None or an int >= 0 (got {prefetch!r})")
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)} (got {pool!r})")
        self.app = app
        self.queues = list(queues) if queues else ["general"]
        self.concurrency = concurrency
        self.prefetch = auto_prefetch(concurrency, self.queues) if prefetch is None else prefetch
        self._adaptive = prefetch is None and self.prefetch > 0
        """The window is the default one, which follows the runs' pace."""
        self._ended_runs = 0
        """Runs ended since the window was last adapted."""
        self._paced_since = 0.0
        """When (monotonic) the window was last adapted."""
        self.pool = pool
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        # Converted now so a bad declaration fails before connecting.
        self._definitions = [
            pb.TaskDefinition(name=task.name, defaults=_options.to_pb(task.options))
            for task in app.tasks.values()
        ]
        self.worker_id = ""
        self.lease_ms = 0
        # Session-loop state (see the module docstring).
        self._runs: dict[TaskKey, _Run] = {}
        self._active = 0
        """Runs launched and not ended: at most :attr:`_slots`."""
        self._slots = concurrency
        """How many runs may be launched at once. With only plain functions
        registered, every assignment goes to the pool at once (``concurrency
        + prefetch``): its ``concurrency`` threads take the prefetched runs
        in order as they free, without a round trip through the session loop
        between one body and the next (with no-op tasks, that round trip was
        a fifth of a worker's CPU per run). ``async def`` bodies run elsewhere,
        so with any of them registered, runs wait here for a slot."""
        self._waiting: "Deque[tuple[_Run, Any, list[Any], dict[str, Any]]]" = collections.deque()
        """Prefetched runs, in assignment order, until a slot frees."""
        self._window_closed = False
        """This stream's window is closed: every slot held a long body, and the
        unstarted runs were given back (see :meth:`_check_window`)."""
        self._unacked: dict[TaskKey, pb.Outcome] = {}
        self._requests: dict[int, _Run] = {}
        self._request_ids = itertools.count(1)
        self._outbox: Optional[_Outbox] = None
        self._traffic = _Traffic()
        # What the reader does with each kind of broker message (see _read).
        self._handlers: dict[str, Callable[[Any], None]] = {
            "assignment": self._start,
            "cancel": self._cancel,
            "outcome_ack": self._acked,
            "throttle_granted": self._granted,
            "error": self._refused,
        }
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._wake: Optional[asyncio.Event] = None
        self._pool: Optional[Union[_Pool, ProcessPool]] = None
        self._abandoned: dict[TaskKey, float] = {}
        """Runs lost with a pool process that died, until when (monotonic) their
        leases are left to lapse: heartbeats name every other run meanwhile, so
        the broker sees these lost and puts them back in their queues."""
        self._task_loop: Optional[_TaskLoop] = None
        self._draining = False
        self._forced = False
        self._welcomed = False
        self._ever_welcomed = False
        """Some stream was welcomed: a failure to connect is then a lost
        connection, before that one that never existed."""
        self._connected = False
        """A welcomed stream is up. Runs start only then: one prefetched and not
        started when the stream breaks waits for the next Welcome, because the
        broker may not hold it any more (a broker killed before the assignment
        was durable forgets it, and the Welcome says it is lost); run anyway, it
        could run twice."""

    # -- lifecycle -----------------------------------------------------------

    def run(self) -> None:
        """Serve until drained; blocks.

        From the main thread, SIGTERM and SIGINT start a drain: take nothing
        new, finish the running tasks, wait for their outcomes to be
        acknowledged, say Goodbye. A second signal gives up on the running
        tasks and exits the process at once (status 1); their leases lapse
        and the broker redelivers them.

        Raises:
            WorkerConfigError: the broker refused this worker's Hello.
        """
        on_main = threading.current_thread() is threading.main_thread()
        asyncio.run(self._serve(install_signals=on_main))
        if self._forced and on_main:
            logging.shutdown()
            os._exit(1)  # pool threads still run task bodies; they cannot be joined

    def stop(self) -> None:
        """Start a drain from any thread (what SIGTERM does)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._begin_drain)

    async def _serve(self, install_signals: bool) -> None:
        try:
            brokers = _failover.Brokers.parse(self.app.address)
        except ValueError as exc:
            raise WorkerConfigError(str(exc)) from None
        loop = self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        if self.pool == "processes":
            # Before any gRPC channel of this process: see baton._processes.
            self._pool = ProcessPool(
                self.concurrency, loop, self._ended, app=self.app, on_lost=self._lost_in_pool, slots=self
            )
        else:
            self._pool = _Pool(self.concurrency, loop, self._ended)
        if any(t.is_async for t in self.app.tasks.values()):
            self._task_loop = _TaskLoop()
            self._task_loop.start()
        self._set_window(self.prefetch)
        signals = (signal.SIGTERM, signal.SIGINT) if install_signals else ()
        for sig in signals:
            loop.add_signal_handler(sig, self._on_signal, sig)
        log.info(
            "worker %s: queues=%s concurrency=%d prefetch=%d pool=%s tasks=%s broker=%s",
            self.name,
            ",".join(self.queues),
            self.concurrency,
            self.prefetch,
            self.pool,
            ",".join(sorted(self.app.tasks)),
            self.app.address,
        )
        backoff = BACKOFF_MIN
        quiet = False  # log the first loss of a series, not every retry
        try:
            while not self._finished():
                self._welcomed = False
                address = brokers.current
                refusal = _failover.NO_REFUSAL
                try:
                    if await self._session(address):
                        break
                except _SessionLost as exc:
                    self._log_lost(address, str(exc), quiet)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() in _FATAL_CODES:
                        raise WorkerConfigError(
                            f"broker refused worker {self.name}: {exc.code().name}: {exc.details()}"
                        ) from None
                    refusal = _failover.refusal_of(exc)
                    self._log_lost(address, f"{exc.code().name}: {exc.details()}", quiet)
                if self._welcomed:
                    brokers.succeeded()
                    backoff = BACKOFF_MIN
                quiet = not self._welcomed
                # The next broker at once while a round of the addresses goes
                # on (a leader a standby named first); after a round, the
                # backoff, only its first step if a standby answered (a
                # leader is being elected: docs/deployment.md).
                following = brokers.failed(refusal)
                if not following.pause:
                    log.debug("worker %s: trying %s", self.name, brokers.current)
                    continue
                if following.standby:
                    await self._sleep(BACKOFF_MIN)
                else:
                    await self._sleep(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX)
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
            if self._task_loop is not None:
                self._task_loop.stop()
            self._pool.shutdown(wait=not self._forced)
        t = self._traffic
        log.info(
            "worker %s: stopped (sent %d messages in %d frames, read %d in %d)",
            self.name, t.messages_sent, t.frames_sent, t.messages_read, t.frames_read,
        )

    def _finished(self) -> bool:
        return self._forced or (self._draining and not self._runs and not self._unacked)

    def _log_lost(self, address: str, detail: str, quiet: bool) -> None:
        level = logging.DEBUG if quiet else logging.WARNING
        if self._ever_welcomed:
            log.log(level, "worker %s: connection to %s lost (%s); reconnecting", self.name, address, detail)
        else:
            log.log(
                level,
                "worker %s: could not connect to the broker at %s, never connected (%s); retrying",
                self.name, address, detail,
            )

    async def _sleep(self, seconds: float) -> None:
        """The reconnect backoff: sleep, ending early only once the worker is finished
        (a second signal, or a drain with nothing left to report)."""
        assert self._wake is not None and self._loop is not None
        deadline = self._loop.time() + seconds
        while not self._finished():
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except asyncio.TimeoutError:
                return

    def _notify(self) -> None:
        """Wake whoever waits for the worker to be finished (:meth:`_until_finished`,
        :meth:`_sleep`). Only a draining or forced worker can finish, so until then
        this is a no-op: waking those waiters for every outcome and ack would cost
        two task switches per run for nothing."""
        if self._wake is not None and (self._draining or self._forced):
            self._wake.set()

    def _on_signal(self, signum: int) -> None:
        if not self._draining:
            log.info("worker %s: %s, draining (again to exit now)", self.name, signal.Signals(signum).name)
            self._begin_drain()
        else:
            log.warning("worker %s: %s again, exiting without finishing %d task(s)", self.name,
                        signal.Signals(signum).name, len(self._runs))
            self._forced = True
            self._notify()

    def _begin_drain(self) -> None:
        if not self._draining:
            self._draining = True
            self._send(pb.WorkerMessage(drain=pb.Drain()))
        self._notify()

    # -- one connection -------------------------------------------------------

    def _hello(self) -> pb.Hello:
        held = list(self._runs) + [k for k in self._unacked if k not in self._runs]
        return pb.Hello(
            worker_name=self.name,
            queues=self.queues,
            tasks=self._definitions,
            concurrency=self.concurrency,
            prefetch=self.prefetch,
            held=[_ref(k) for k in held],
            held_slots=[
                pb.HeldSlot(task=_ref(run.key), request_id=rid)
                for run in self._runs.values()
                for rid in run.slots
            ],
            batch_bytes=READ_BATCH_BYTES,
        )

    async def _session(self, address: str) -> bool:
        """Run one stream with the broker at ``address``; True once the worker
        is done (drained or forced)."""
        outbox = _Outbox(self._traffic)
        outbox.put(pb.WorkerMessage(hello=self._hello()))
        if self._draining:
            outbox.put(pb.WorkerMessage(drain=pb.Drain()))
        channel = _transport.aio_channel(address, self.app.tls)
        tasks: list["asyncio.Task[Any]"] = []
        try:
            call = pb.WorkerStub(channel).Session(outbox.frames(), metadata=_transport.metadata(self.app.token))
            try:
                first = await asyncio.wait_for(call.read(), WELCOME_TIMEOUT)
            except asyncio.TimeoutError:
                raise _SessionLost("no welcome") from None
            if first is grpc.aio.EOF or first.WhichOneof("msg") != "welcome":
                raise _SessionLost("no welcome")
            self._traffic.messages_read += 1
            self._traffic.frames_read += 1
            self._outbox = outbox
            outbox.batch_bytes = first.welcome.batch_bytes
            if outbox.batch_bytes:
                outbox.linger = self._linger
            self._welcomed = self._ever_welcomed = True
            self._on_welcome(first.welcome)
            self._connected = True
            self._launch_waiting()
            self._window_closed = False  # the Hello announced the window anew
            self._ended_runs, self._paced_since = 0, time.monotonic()
            tasks.append(asyncio.ensure_future(self._heartbeats(first.welcome.heartbeat_interval_ms)))
            if self.prefetch:
                tasks.append(asyncio.ensure_future(self._watch_window()))
            reader = asyncio.ensure_future(self._read(call))
            done_waiter = asyncio.ensure_future(self._until_finished())
            tasks += [reader, done_waiter]
            await asyncio.wait({reader, done_waiter}, return_when=asyncio.FIRST_COMPLETED)
            if done_waiter.done():
                outbox.put(pb.WorkerMessage(goodbye=pb.Goodbye()))
                outbox.close()  # half-close: the broker ends the stream
                try:
                    await asyncio.wait_for(asyncio.shield(reader), GOODBYE_TIMEOUT)
                except (asyncio.TimeoutError, grpc.aio.AioRpcError):
                    pass
                return True
            reader.result()  # raises the stream's error, if any
            raise _SessionLost("the broker closed the stream")
        finally:
            self._outbox = None
            if self._connected:
                self._connected = False
                self._hold_back()
            for task in tasks:
                task.cancel()
            await channel.close()

    def _on_welcome(self, welcome: pb.Welcome) -> None:
        self.worker_id = welcome.worker_id
        self.lease_ms = welcome.lease_ms
        for ref in welcome.lost:
            key = _key(ref)
            self._unacked.pop(key, None)
            run = self._runs.pop(key, None)
            if run is not None:
                log.warning("task %s[%s]: lease lost while disconnected; stopping it", run.ctx.name, key[0])
                run.lost = True
                self._stop(run, "lease lost")
        # Whatever the broker did not declare lost is still ours: re-send what
        # it has not acknowledged and the throttle requests it has not granted.
        for outcome in self._unacked.values():
            self._send(pb.WorkerMessage(outcome=outcome), urgent=False)
        for run in self._runs.values():
            for rid, (throttle, _) in run.waiters.items():
                self._send_acquire(run, rid, throttle)
        log.info(
            "worker %s connected as %s (lease %d ms, kept %d, lost %d)",
            self.name, welcome.worker_id, welcome.lease_ms, len(welcome.kept), len(welcome.lost),
        )
        self._notify()

    async def _heartbeats(self, interval_ms: int) -> None:
        interval = (interval_ms or 1000) / 1000
        beat = pb.WorkerMessage(heartbeat=pb.Heartbeat())  # empty: every assignment of this stream
        while True:
            await asyncio.sleep(interval)
            self._send(self._named_beat() if self._abandoned else beat)

    async def _watch_window(self) -> None:
        while True:
            await asyncio.sleep(WINDOW_CHECK)
            self._check_window()
            if self._adaptive:
                self._adapt_window()

    def _check_window(self) -> None:
        """Close the window when every slot holds a long body: a prefetched
        task must not wait behind runs that may take minutes while another
        worker could run it now.

        The worker sends a ``Window`` with prefetch 0 that gives back the runs
        it holds unstarted (the broker puts them back in their queues, to go
        to whichever worker is free), and takes nothing beyond its slots until
        a short run ends in one of them: then :meth:`_open_window` opens the
        window again.
        """
        if self._window_closed or not self._connected or self._draining:
            return
        running = [run for run in self._runs.values() if run.launched and run.job is None and not run.ended]
        if len(running) < self.concurrency:
            return
        youngest = max(run.started for run in running)
        if time.monotonic() - youngest < LONG_RUN:
            return
        given = self._unstarted()
        for run, *_ in given:
            del self._runs[run.key]
            run.lost = True
        self._window_closed = True
        if self._adaptive:  # long runs: it opens again at its floor
            self._set_window(auto_prefetch(self.concurrency, self.queues))
        log.info(
            "worker %s: every slot runs a body longer than %.1fs: window closed, %d waiting task(s) given back",
            self.name, LONG_RUN, len(given),
        )
        self._send(pb.WorkerMessage(window=pb.Window(prefetch=0, give_back=[_ref(run.key) for run, *_ in given])))

    def _adapt_window(self) -> None:
        """The default window follows the pace of the last check's runs (see
        :func:`adapted_window`); the broker hears of a change in a ``Window``
        that gives nothing back (a smaller window only stops new assignments:
        those held already run here)."""
        now = time.monotonic()
        finished, period = self._ended_runs, now - self._paced_since
        self._ended_runs, self._paced_since = 0, now
        if self._window_closed or not self._connected or self._draining:
            return
        window = adapted_window(self.prefetch, finished, period, self.concurrency)
        if window != self.prefetch:
            self._set_window(window)
            self._send(pb.WorkerMessage(window=pb.Window(prefetch=window)))
            self._launch_waiting()

    def _set_window(self, window: int) -> None:
        """The window announced from now on, and what may be launched at once."""
        self.prefetch = window
        if self._task_loop is None:  # plain bodies only: the pool holds the window too
            self._slots = self.concurrency + window

    def _unstarted(self) -> "list[tuple[_Run, Any, list[Any], dict[str, Any]]]":
        """Take every run not started yet out of the pool and the waiting line,
        in assignment order (the pool's first: it was given them first)."""
        taken = []
        if self._pool is not None:
            for run in list(self._runs.values()):
                job = run.job
                if job is None or not run.launched or not self._pool.withdraw(run):
                    continue  # not queued in the pool: running, or waiting already
                run.launched = False
                run.job = None
                self._active -= 1
                taken.append((run, self.app.tasks[run.ctx.name], job[2], job[3]))
        taken.extend(self._waiting)
        self._waiting.clear()
        return taken

    def _open_window(self) -> None:
        """A short run ended after the window was closed: take prefetched work
        again. Not after a long one: while the bodies run long, a window would
        only hold more tasks back (and give them back a second later), so the
        window stays closed until a short task shows up in a free slot."""
        if self._window_closed and self._connected:
            self._window_closed = False
            self._send(pb.WorkerMessage(window=pb.Window(prefetch=self.prefetch)))

    def _named_beat(self) -> pb.WorkerMessage:
        """A heartbeat naming every run but the abandoned ones (see ``_abandoned``)."""
        now = time.monotonic()
        for key, until in list(self._abandoned.items()):
            if until <= now:
                del self._abandoned[key]
        held = [k for k in itertools.chain(self._runs, self._unacked) if k not in self._abandoned]
        # A heartbeat is never refused, and one naming no current run extends nothing:
        # it keeps the stream alive while only abandoned runs are left.
        return pb.WorkerMessage(heartbeat=pb.Heartbeat(tasks=[_ref(k) for k in held] or [pb.TaskRef()]))

    async def _until_finished(self) -> None:
        assert self._wake is not None
        while True:
            self._wake.clear()
            if self._finished():
                return
            await self._wake.wait()

    async def _read(self, call: Any) -> None:
        """Handle the broker's messages until the stream ends; a BrokerBatch's
        messages one by one, in order, as if each had come on its own."""
        dispatch = self._dispatch
        traffic = self._traffic
        while True:
            msg = await call.read()
            if msg is grpc.aio.EOF:
                return
            traffic.frames_read += 1
            if msg.WhichOneof("msg") == "batch":
                batch = msg.batch.messages
                traffic.messages_read += len(batch)
                for inner in batch:
                    dispatch(inner)
            else:
                traffic.messages_read += 1
                dispatch(msg)

    def _dispatch(self, msg: pb.BrokerMessage) -> None:
        kind = msg.WhichOneof("msg")
        handler = self._handlers.get(kind)
        if handler is None:  # a second Welcome, a nested batch, a kind newer than this SDK
            log.warning("worker %s: unexpected %s from the broker", self.name, kind)
            return
        handler(getattr(msg, kind))

    def _send(self, msg: pb.WorkerMessage, urgent: bool = True) -> None:
        """Queue a message on the current stream; dropped while disconnected
        (the reconnect's Hello and Welcome bring the broker up to date).
        Outcomes are sent with ``urgent=False`` (see :data:`OUTCOME_LINGER`)."""
        if self._outbox is not None:
            self._outbox.put(msg, urgent)

    def _linger(self) -> float:
        """Seconds queued outcomes should still wait for the runs in flight
        started less than OUTCOME_LINGER ago (<= 0: none are)."""
        youngest = max((run.started for run in self._runs.values() if run.launched), default=None)
        if youngest is None:
            return 0.0
        return youngest + OUTCOME_LINGER - time.monotonic()

    # -- runs -----------------------------------------------------------------

    def _start(self, a: pb.Assignment) -> None:
        key = _key(a.task)
        if key in self._runs:
            log.warning("task %s[%s]: attempt %d assigned twice; ignored", a.name, key[0], key[1])
            return
        task = self.app.tasks.get(a.name)
        if task is None:
            self._report(key, outcomes.failure("NotRegistered", f"task {a.name!r} is not registered in this worker"))
            return
        try:
            args = _json.loads(a.args, [])
            kwargs = _json.loads(a.kwargs, {})
            if not isinstance(args, list) or not isinstance(kwargs, dict):
                raise ValueError("args must be a JSON array and kwargs a JSON object")
        except ValueError as exc:
            self._report(key, outcomes.failure("DecodeError", f"bad arguments for {a.name}: {exc}"))
            return
        ctx = TaskContext(
            name=a.name,
            task_id=a.task.task_id,
            attempt=a.task.attempt,
            chain_id=a.chain_id,
            phase=PHASES.get(a.phase, ""),
            step_index=a.step_index,
            queue=a.queue,
            context=a.context if a.context else {},  # copied by TaskContext; an empty map's copy is slow
            polls=a.polls,
            retries=a.retries,
            timeout_ms=a.timeout_ms,
            _slots=self,
        )
        run = _Run(key, ctx, is_async=task.is_async)
        self._runs[key] = run
        if self._waiting or self._active >= self._slots:
            self._waiting.append((run, task, args, kwargs))  # prefetched, behind those waiting
            return
        self._launch(run, task, args, kwargs)

    def _launch_waiting(self) -> None:
        """Start prefetched runs in the free slots, while connected."""
        while self._connected and self._waiting and self._active < self._slots:
            self._launch(*self._waiting.popleft())

    def _hold_back(self) -> None:
        """The stream broke: take back from the pool the runs no thread has
        started, in order, to wait for the next Welcome (see ``_connected``)."""
        self._waiting.extend(self._unstarted())

    def _launch(self, run: _Run, task: Any, args: list[Any], kwargs: dict[str, Any]) -> None:
        key = run.key
        run.launched = True
        run.started = time.monotonic()
        self._active += 1
        log.debug("task %s[%s] attempt %d: started", run.ctx.name, key[0], key[1])
        assert self._loop is not None and self._pool is not None
        if task.is_async:
            assert self._task_loop is not None
            cf = asyncio.run_coroutine_threadsafe(self._run_coroutine(run, task.fn, args, kwargs), self._task_loop.loop)
            fut = asyncio.wrap_future(cf, loop=self._loop)
            fut.add_done_callback(lambda f: self._ended(run, self._coroutine_outcome(run, f)))
        else:
            self._pool.submit(run, task.fn, args, kwargs)

    @staticmethod
    async def _run_coroutine(run: _Run, fn: Any, args: list[Any], kwargs: dict[str, Any]) -> pb.Outcome:
        """On the task loop: record the asyncio task so Cancel can reach it."""
        run.atask = asyncio.current_task()
        if run.cancel_requested:
            raise asyncio.CancelledError()
        return await outcomes.run_async(fn, run.ctx, args, kwargs)

    @staticmethod
    def _cancel_coroutine(run: _Run) -> None:
        """On the task loop."""
        run.cancel_requested = True
        if run.atask is not None:
            run.atask.cancel()

    @staticmethod
    def _coroutine_outcome(run: _Run, fut: "asyncio.Future[pb.Outcome]") -> pb.Outcome:
        if fut.cancelled():
            return outcomes.cancelled(run.ctx.cancel_reason)
        exc = fut.exception()
        if exc is not None:
            return outcomes.worker_error(exc)
        return fut.result()

    def _ended(self, run: _Run, outcome: pb.Outcome) -> None:
        """On the session loop, when a body returned (or a prefetched run was
        stopped before it started): report its outcome (a cancelled run
        reports ``Cancelled``, a lost one nothing), and start the next
        prefetched run in the freed slot."""
        self._forget(run)
        if run.lost:
            log.info("task %s[%s]: ended after its lease was lost; not reported", run.ctx.name, run.key[0])
            self._notify()
            return
        if run.cancelled:
            outcome = outcomes.cancelled(run.ctx.cancel_reason)
        if log.isEnabledFor(logging.INFO):  # spares _describe when the line is not logged
            log.info(
                "task %s[%s] attempt %d: %s in %.3fs",
                run.ctx.name, run.key[0], run.key[1], _describe(outcome), time.monotonic() - run.started,
            )
        self._report(run.key, outcome)

    def _forget(self, run: _Run) -> None:
        """A run ended here: free its slot for the next prefetched run and drop
        its throttle requests (the broker frees a run's throttle slots when its
        outcome is recorded, or when its lease lapses)."""
        run.ended = True
        if self._runs.get(run.key) is run:
            del self._runs[run.key]
        if run.launched:
            self._active -= 1
            self._ended_runs += 1
            self._launch_waiting()
            if self._window_closed and time.monotonic() - run.started < LONG_RUN:
                self._open_window()
        for rid, (_, waiter) in run.waiters.items():
            self._requests.pop(rid, None)
            waiter.cancel()
        for rid in run.slots:
            self._requests.pop(rid, None)
        run.waiters.clear()
        run.slots.clear()

    def _lost_in_pool(self, run: _Run) -> None:
        """On the session loop: the pool process running ``run`` died. Report
        nothing and stop extending its lease, so that the broker reports it lost
        and runs the step again (a crash of the body is a crash of its worker,
        as with Celery's WorkerLostError; it may crash again, so the broker's
        bound on lost runs applies rather than a retry budget)."""
        log.warning("task %s[%s] attempt %d: its pool process died; left to the broker as lost",
                    run.ctx.name, run.key[0], run.key[1])
        self._abandoned[run.key] = time.monotonic() + 2 * (self.lease_ms or 30000) / 1000
        self._forget(run)
        self._notify()

    def _report(self, key: TaskKey, outcome: pb.Outcome) -> None:
        ref = outcome.task
        ref.task_id, ref.attempt = key
        self._unacked[key] = outcome
        self._send(pb.WorkerMessage(outcome=outcome), urgent=False)
        self._notify()

    def _acked(self, ack: pb.OutcomeAck) -> None:
        key = _key(ack.task)
        if self._unacked.pop(key, None) is None:
            return
        if not ack.accepted:
            log.warning("task %s attempt %d: outcome rejected by the broker: %s", key[0], key[1], ack.reason)
        self._notify()

    def _cancel(self, cancel: pb.Cancel) -> None:
        run = self._runs.get(_key(cancel.task))
        if run is None:
            return
        log.info("task %s[%s]: cancelled by the broker (%s)", run.ctx.name, run.key[0], cancel.reason)
        run.cancelled = True
        self._stop(run, cancel.reason or "cancelled")

    def _stop(self, run: _Run, reason: str) -> None:
        """Ask a run to stop: coroutines are cancelled, threads are told and
        wake from throttle waits; their outcome is reported when they return."""
        run.ctx._cancel.cancel(reason)
        if not run.launched:
            # Prefetched: it never starts.
            self._waiting = collections.deque(w for w in self._waiting if w[0] is not run)
            self._ended(run, outcomes.cancelled(reason))
            return
        if not run.is_async and self._pool is not None and self._pool.withdraw(run):
            # Prefetched and still queued in the pool: it never starts either.
            self._ended(run, outcomes.cancelled(reason))
            return
        for _, waiter in run.waiters.values():
            waiter.cancel()
        if not run.is_async and self._pool is not None:
            self._pool.cancel(run, reason)
        if run.is_async and self._task_loop is not None:
            self._task_loop.loop.call_soon_threadsafe(self._cancel_coroutine, run)

    # -- in-body throttles (called by ``throttle`` through TaskContext._slots) --

    def acquire_blocking(self, run: TaskKey, throttle: pb.Throttle) -> int:
        """From a pool thread: ask for a slot and block until it is granted.

        Raises:
            Cancelled: the run was cancelled while waiting.
            ThrottleRefused: the broker refused the request (a
                :class:`ThrottleError`, and fatal: not retried).
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError("in an async task, use `async with throttle(...)`")
        assert self._loop is not None
        cf = asyncio.run_coroutine_threadsafe(self._acquire(run, throttle), self._loop)
        try:
            return cf.result()
        except concurrent.futures.CancelledError:
            raise Cancelled("cancelled while waiting for a throttle slot") from None

    async def acquire_async(self, run: TaskKey, throttle: pb.Throttle) -> int:
        """From the task loop: the same, awaitable."""
        assert self._loop is not None
        cf = asyncio.run_coroutine_threadsafe(self._acquire(run, throttle), self._loop)
        return await asyncio.wrap_future(cf)

    def release(self, run: TaskKey, request_id: int) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._release, run, request_id)

    def _send_acquire(self, run: _Run, rid: int, throttle: pb.Throttle) -> None:
        self._send(
            pb.WorkerMessage(
                throttle_acquire=pb.ThrottleAcquire(request_id=rid, task=_ref(run.key), throttle=throttle)
            )
        )

    def _send_release(self, run: _Run, rid: int) -> None:
        self._send(pb.WorkerMessage(throttle_release=pb.ThrottleRelease(request_id=rid, task=_ref(run.key))))

    async def _acquire(self, key: TaskKey, throttle: pb.Throttle) -> int:
        run = self._runs.get(key)
        if run is None or run.cancelled or run.lost:
            raise Cancelled("the run is no longer current")
        assert self._loop is not None
        rid = next(self._request_ids)
        waiter: "asyncio.Future[None]" = self._loop.create_future()
        run.waiters[rid] = (throttle, waiter)
        self._requests[rid] = run
        self._send_acquire(run, rid, throttle)
        try:
            await waiter
        except BaseException:
            # Withdraw the request, or give back a slot granted meanwhile.
            pending = run.waiters.pop(rid, None) is not None
            granted = run.slots.pop(rid, None) is not None
            self._requests.pop(rid, None)
            if (pending or granted) and not run.ended:
                self._send_release(run, rid)
            raise
        return rid

    def _granted(self, granted: pb.ThrottleGranted) -> None:
        rid = granted.request_id
        run = self._requests.get(rid)
        if run is None or rid not in run.waiters:
            log.debug("throttle grant for unknown request %d ignored", rid)
            return
        throttle, waiter = run.waiters.pop(rid)
        run.slots[rid] = throttle
        if not waiter.done():
            waiter.set_result(None)

    def _release(self, key: TaskKey, rid: int) -> None:
        run = self._runs.get(key)
        if run is None:
            return  # the run ended: the broker released its slots with it
        if run.slots.pop(rid, None) is not None:
            self._requests.pop(rid, None)
            self._send_release(run, rid)

    def _refused(self, error: pb.WorkerError) -> None:
        run = self._requests.get(error.request_id) if error.request_id else None
        if run is not None and error.request_id in run.waiters:
            _, waiter = run.waiters.pop(error.request_id)
            self._requests.pop(error.request_id, None)
            if not waiter.done():
                waiter.set_exception(ThrottleRefused(error.message))
            return
        log.warning("worker %s: the broker refused a request: %s", self.name, error.message)


def _describe(outcome: pb.Outcome) -> str:
    kind = outcome.WhichOneof("result")
    if kind == "failure":
        f = outcome.failure
        return f"failed ({f.error_type}: {f.message}{'' if f.retryable else ', fatal'})"
    if kind == "retry_later":
        return f"retry in {outcome.retry_later.delay_ms} ms"
    return "succeeded"
