"""The process pool (``--pool processes``): plain task bodies in child processes.

Why: CPU-bound bodies in the thread pool share one GIL, so a worker of
``-c 8`` threads computes no faster than one. Celery users run such tasks in
prefork processes; here each of ``concurrency`` children runs one body at a
time, while the session loop, heartbeats and all bookkeeping stay in the
worker process (:mod:`baton.worker`), exactly as with threads.

Layout:

* a **zygote**, forked when the pool starts, before the worker opens any
  gRPC channel: a copy of the worker process with the app imported and its
  tasks registered, that does nothing but fork children on request. Every
  child, the first ones and those that replace a crashed one, is forked
  from it, never from the worker process itself, whose gRPC threads and
  locks would not survive a fork;
* each **child** talks to the worker over one socket pair, in pickled
  tuples (:class:`multiprocessing.connection.Connection`). A reader thread
  takes the worker's messages (a run, a cancel, a throttle grant); the main
  thread runs the bodies, one at a time;
* on the worker's side the children's sockets are read by the session loop
  (``loop.add_reader``): no thread of the worker's per child.

Semantics are those of the thread pool: a body's outcome (success, failure,
retry-later) is made in the child by :func:`baton.outcomes.run_sync` and
sent back serialized; ``with throttle(...)`` in a body asks the worker, which
asks the broker (cancelling the run wakes the wait); a cancel reaches the
child, where ``current_task().cancelled`` and ``wait_cancelled`` see it.
A child that dies (killed, segfault, ``os._exit``) is replaced, and its run
is reported as **lost**: the worker stops extending that run's lease, the
broker sees it lapse and puts the step back in its queue (``step_lost``),
as if a whole worker had died with it. The worker itself goes on.

``async def`` bodies still run on the worker's task loop thread: they are
not CPU-bound by design, and a coroutine needs no process of its own.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
import queue
import signal
import socket
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, Callable, Deque, Optional

from . import _pipeline, outcomes, pb
from .context import TaskContext, TaskKey
from .errors import Cancelled, ThrottleRefused

if TYPE_CHECKING:
    from .app import Baton
    from .worker import _Job, _Run

log = logging.getLogger("baton.worker")

# Messages, worker -> child:
#   ("run", name, args, kwargs, context fields)   start a body (the child is idle)
#   ("cancel", reason)                            the current run was cancelled
#   ("granted", request, request_id)              a throttle wait ended with a slot
#   ("denied", request, kind, message)            ... without one ("cancelled" or "refused")
# child -> worker:
#   ("ready", pid)                                first message of a child
#   ("done", outcome bytes)                       the current body ended
#   ("acquire", request, throttle bytes)          a throttle slot for the current run
#   ("release", request_id)                       give back a granted slot


class _Zygote:
    """The process every child is forked from (see the module docstring)."""

    def __init__(self, app: "Baton") -> None:
        parent, child = socket.socketpair()
        pid = os.fork()
        if pid == 0:  # the zygote
            parent.close()
            try:
                _zygote_main(child, app)
            finally:
                os._exit(0)
        child.close()
        self.pid = pid
        self._control = parent
        self._lock = threading.Lock()

    def spawn(self) -> Connection:
        """A new child's end of its socket pair, as a Connection."""
        with self._lock:
            self._control.sendall(b"s")
            _, fds, _, _ = socket.recv_fds(self._control, 1, 1)
        if not fds:
            raise RuntimeError("the process pool's zygote is gone")
        return Connection(fds[0])

    def close(self) -> None:
        self._control.close()  # the zygote exits on EOF
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass


def _quiet_signals() -> None:
    """In the zygote and the children: the worker handles SIGINT/SIGTERM (a
    drain) and ends the children by closing their sockets; a Ctrl-C sent to
    the whole process group must not kill bodies the drain waits for."""
    try:
        signal.set_wakeup_fd(-1)  # the worker's event loop's, inherited
    except ValueError:
        pass
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


def _zygote_main(control: socket.socket, app: "Baton") -> None:
    _quiet_signals()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    while control.recv(1):
        mine, theirs = socket.socketpair()
        pid = os.fork()
        if pid == 0:
            control.close()
            theirs.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            code = 0
            try:
                _child_main(Connection(mine.detach()), app)
            except BaseException:  # noqa: BLE001 - a child ends here whatever happens
                code = 1
            finally:
                os._exit(code)
        mine.close()
        socket.send_fds(control, [b"f"], [theirs.fileno()])
        theirs.close()


class _ChildSlots:
    """In a child, what ``throttle`` needs (``TaskContext._slots``): in-body
    throttle requests go to the worker, which asks the broker."""

    def __init__(self, child: "_ChildSide") -> None:
        self._child = child
        self._ids = itertools.count(1)
        self._waits: dict[int, "queue.SimpleQueue[tuple[str, Any]]"] = {}
        self._lock = threading.Lock()

    def acquire_blocking(self, run: TaskKey, throttle: pb.Throttle) -> int:
        request = next(self._ids)
        answer: "queue.SimpleQueue[tuple[str, Any]]" = queue.SimpleQueue()
        with self._lock:
            self._waits[request] = answer
        self._child.send(("acquire", request, throttle.SerializeToString()))
        kind, value = answer.get()
        if kind == "granted":
            return int(value)
        if kind == "refused":
            raise ThrottleRefused(value)
        raise Cancelled(value or "cancelled while waiting for a throttle slot")

    async def acquire_async(self, run: TaskKey, throttle: pb.Throttle) -> int:
        raise RuntimeError("async bodies do not run in the process pool")

    def release(self, run: TaskKey, request_id: int) -> None:
        self._child.send(("release", request_id))

    def answer(self, request: int, kind: str, value: Any) -> None:
        with self._lock:
            waiting = self._waits.pop(request, None)
        if waiting is not None:
            waiting.put((kind, value))


class _ChildSide:
    """A child: its reader thread and the body loop on its main thread."""

    def __init__(self, conn: Connection, app: "Baton") -> None:
        self._conn = conn
        self._app = app
        self._send_lock = threading.Lock()
        self._runs: "queue.SimpleQueue[Optional[tuple[Any, ...]]]" = queue.SimpleQueue()
        self._ctx: Optional[TaskContext] = None
        self._slots = _ChildSlots(self)

    def send(self, msg: tuple[Any, ...]) -> None:
        with self._send_lock:
            self._conn.send(msg)

    def read(self) -> None:
        """The reader thread: runs go to the main thread, the rest is handled here."""
        try:
            while True:
                msg = self._conn.recv()
                kind = msg[0]
                if kind == "run":
                    self._runs.put(msg)
                elif kind == "cancel":
                    ctx = self._ctx
                    if ctx is not None:
                        ctx._cancel.cancel(msg[1])
                elif kind == "granted":
                    self._slots.answer(msg[1], "granted", msg[2])
                elif kind == "denied":
                    self._slots.answer(msg[1], msg[2], msg[3])
        except (EOFError, OSError):
            pass
        # The worker is gone or closed this child: a body still running is
        # nobody's any more (its lease lapses), so do not wait for it.
        os._exit(0)

    def serve(self) -> None:
        tasks = self._app.tasks
        while True:
            msg = self._runs.get()
            assert msg is not None
            _, name, args, kwargs, fields = msg
            ctx = self._ctx = TaskContext(**fields, _slots=self._slots)
            task = tasks.get(name)
            if task is None:
                outcome = outcomes.failure("NotRegistered", f"task {name!r} is not registered in this worker")
            else:
                outcome = outcomes.run_sync(task.fn, ctx, args, kwargs)
            self._ctx = None
            self.send(("done", outcome.SerializeToString()))


def _child_main(conn: Connection, app: "Baton") -> None:
    # What the worker process had of a client (a channel, submissions in
    # flight) belongs to it; this process opens its own on first use.
    app._client = None
    app._in_flight = _pipeline.Pipeline()
    side = _ChildSide(conn, app)
    side.send(("ready", os.getpid()))
    threading.Thread(target=side.read, name="baton-child-reader", daemon=True).start()
    side.serve()


class _Child:
    """The worker's side of one child. ``run`` is what it runs (None: idle)."""

    __slots__ = ("conn", "pid", "run", "index")

    def __init__(self, conn: Connection, index: int) -> None:
        self.conn = conn
        self.pid = 0
        self.run: "Optional[_Run]" = None
        self.index = index


class ProcessPool:
    """``size`` child processes running plain task bodies for the session loop.

    The same contract as the thread pool (``baton.worker._Pool``): jobs
    start in submission order, at most ``size`` at once, ``withdraw`` takes
    back a job no child took yet, ``on_done(run, outcome)`` is called on the
    session loop. Besides: ``cancel`` forwards a cancel to the child running
    a run, and ``on_lost(run)`` is called when a child died under a run.
    ``slots`` is the worker, whose in-body throttle calls serve the children.
    """

    def __init__(
        self,
        size: int,
        loop: asyncio.AbstractEventLoop,
        on_done: Callable[["_Run", pb.Outcome], None],
        *,
        app: "Baton",
        on_lost: Callable[["_Run"], None],
        slots: Any,
    ) -> None:
        self._loop = loop
        self._on_done = on_done
        self._on_lost = on_lost
        self._slots = slots
        self._jobs: "Deque[_Job]" = collections.deque()
        self._idle: "Deque[_Child]" = collections.deque()
        self._children: "list[Optional[_Child]]" = [None] * size
        self._closing = False
        sys.stdout.flush()
        sys.stderr.flush()
        self._zygote = _Zygote(app)
        for i in range(size):
            self._spawn(i)

    @property
    def pids(self) -> "list[int]":
        """The children's process ids (0 for one not started yet)."""
        return [c.pid if c is not None else 0 for c in self._children]

    def _spawn(self, index: int) -> None:
        conn = self._zygote.spawn()
        child = _Child(conn, index)
        self._children[index] = child
        msg = conn.recv()  # ("ready", pid): the child is up
        child.pid = msg[1]
        self._loop.add_reader(conn.fileno(), self._readable, child)
        self._idle.append(child)

    def submit(self, run: "_Run", fn: Callable[..., Any], args: "list[Any]", kwargs: "dict[str, Any]") -> None:
        job = run.job = (run, fn, args, kwargs)
        if self._idle:
            self._start(self._idle.popleft(), job)
        else:
            self._jobs.append(job)

    def withdraw(self, run: "_Run") -> bool:
        job = run.job
        if job is None:
            return False
        try:
            self._jobs.remove(job)
        except ValueError:
            return False
        return True

    def cancel(self, run: "_Run", reason: str) -> None:
        for child in self._children:
            if child is not None and child.run is run:
                self._tell(child, ("cancel", reason))

    def _start(self, child: _Child, job: "_Job") -> None:
        run, _, args, kwargs = job
        run.job = None
        child.run = run
        run.started = time.monotonic()
        ctx = run.ctx
        fields = {
            "name": ctx.name, "task_id": ctx.task_id, "attempt": ctx.attempt, "chain_id": ctx.chain_id,
            "phase": ctx.phase, "step_index": ctx.step_index, "queue": ctx.queue, "context": dict(ctx.context),
            "polls": ctx.polls, "retries": ctx.retries, "timeout_ms": ctx.timeout_ms,
        }
        self._tell(child, ("run", ctx.name, args, kwargs, fields))

    def _tell(self, child: _Child, msg: "tuple[Any, ...]") -> None:
        try:
            child.conn.send(msg)
        except (OSError, ValueError):
            pass  # it died: _readable sees the EOF and reports its run lost

    def _readable(self, child: _Child) -> None:
        """On the session loop: every message the child sent, or its death."""
        conn = child.conn
        try:
            while conn.poll():
                self._handle(child, conn.recv())
                if self._children[child.index] is not child:
                    return
        except (EOFError, OSError):
            self._died(child)

    def _handle(self, child: _Child, msg: "tuple[Any, ...]") -> None:
        kind = msg[0]
        run = child.run
        if kind == "done":
            child.run = None
            if self._jobs:
                self._start(child, self._jobs.popleft())
            else:
                self._idle.append(child)
            if run is not None:
                self._on_done(run, pb.Outcome.FromString(msg[1]))
        elif kind == "acquire" and run is not None:
            request = msg[1]
            throttle = pb.Throttle.FromString(msg[2])
            fut = asyncio.ensure_future(self._slots._acquire(run.key, throttle))
            fut.add_done_callback(lambda f: self._answer(child, run, request, f))
        elif kind == "release" and run is not None:
            self._slots._release(run.key, msg[1])

    def _answer(self, child: _Child, run: "_Run", request: int, fut: "asyncio.Future[int]") -> None:
        if child.run is not run:
            return
        if fut.cancelled():
            msg: "tuple[Any, ...]" = ("denied", request, "cancelled", run.ctx.cancel_reason)
        elif isinstance(fut.exception(), ThrottleRefused):
            msg = ("denied", request, "refused", str(fut.exception()))
        elif fut.exception() is not None:
            msg = ("denied", request, "cancelled", str(fut.exception()))
        else:
            msg = ("granted", request, fut.result())
        self._tell(child, msg)

    def _died(self, child: _Child) -> None:
        self._loop.remove_reader(child.conn.fileno())
        child.conn.close()
        run = child.run
        child.run = None
        if child in self._idle:
            self._idle.remove(child)
        if self._closing:
            return
        log.warning("pool process %d died%s; starting another", child.pid,
                    f" running task {run.ctx.name}[{run.key[0]}]" if run is not None else "")
        self._spawn(child.index)
        if self._jobs:
            self._start(self._idle.popleft(), self._jobs.popleft())
        if run is not None:
            self._on_lost(run)

    def shutdown(self, wait: bool) -> None:
        """End the children (a body still running is abandoned: closing its
        socket ends it) and the zygote."""
        self._closing = True
        for child in self._children:
            if child is None:
                continue
            try:
                self._loop.remove_reader(child.conn.fileno())
            except (ValueError, RuntimeError):
                pass
            child.conn.close()
        self._zygote.close()
        if wait:
            deadline = time.monotonic() + 5
            for child in self._children:
                while child is not None and _alive(child.pid) and time.monotonic() < deadline:
                    time.sleep(0.01)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True
