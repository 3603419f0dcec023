"""The client side: gRPC channels to the broker and the :class:`AsyncResult` handle.

Every call is a plain ``Broker`` RPC; nothing is cached or decided here,
except which broker it goes to when several are given (a comma list): the
one that last answered, following the leader (:mod:`baton._failover`). A
channel is opened lazily on first use, so importing a module that builds a
``Baton`` app (as every worker does) opens no connection. An ``AsyncResult``
may be handed out before its chain is stored (see :mod:`baton._pipeline`):
everything it does first waits for that acknowledgment.
"""

from __future__ import annotations

import concurrent.futures
import os
import queue
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, TypeVar, cast

import grpc

from . import _failover, _json, _transport, pb
from ._pipeline import Submission
from .errors import ChainCancelled, ChainFailed

if TYPE_CHECKING:
    from .app import Baton

STATES = {
    pb.CHAIN_STATE_UNSPECIFIED: "UNKNOWN",
    pb.CHAIN_STATE_RUNNING: "RUNNING",
    pb.CHAIN_STATE_SUCCEEDED: "SUCCEEDED",
    pb.CHAIN_STATE_FAILED: "FAILED",
    pb.CHAIN_STATE_CANCELLED: "CANCELLED",
}
"""Chain states as :meth:`AsyncResult.status` names them (the proto's, unprefixed)."""

FINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})

PHASES = {
    pb.PHASE_UNSPECIFIED: "",
    pb.PHASE_MAIN: "main",
    pb.PHASE_ON_SUCCESS: "on_success",
    pb.PHASE_ON_FAILURE: "on_failure",
}

WATCH_SLICE = 10.0
"""Longest a ``get()`` trusts one silent ``WatchChain`` stream before re-opening it.

A stream can go quiet without an error (an idle connection dropped by a
middlebox, an event lost by the broker); re-opening costs one snapshot and
bounds how late ``get()`` can notice the end."""

T = TypeVar("T")

_DEDUP = {
    pb.DEDUP_IDEMPOTENCY_KEY: "idempotency_key",
    pb.DEDUP_UNIQUE_KEY: "unique_key",
    pb.DEDUP_CHAIN_ID: "chain_id",
}


def failure_record(record: pb.FailureRecord) -> Dict[str, Any]:
    """A ``FailureRecord`` as the dict Python code sees (``ChainFailed.record``)."""
    return {
        "chain_id": record.chain_id,
        "phase": PHASES.get(record.phase, str(record.phase)),
        "step_index": record.step_index,
        "task_name": record.task_name,
        "task_id": record.task_id,
        "attempt": record.attempt,
        "error_type": record.error_type,
        "message": record.message,
        "traceback": record.traceback,
    }


class _Caller:
    """A thread of the client's own that makes the pipelined ``SubmitChains``
    calls, each a blocking call, and hands back a future of its answer.

    Why not ``stub.SubmitChains.future()``: grpc's sync API polls for the
    answers of such calls on a thread it starts when a channel has none in
    flight and ends when the last one ends. A lone ``delay()`` (one with no
    other submission in flight, the common case below a few hundred per
    second) paid that thread's start, about 0.4 ms of the calling thread
    (``delay()`` took 0.48 ms, 0.09 ms this way), and the answer came no
    sooner. A blocking call waits on its own thread instead, and this one
    thread lives as long as the process.

    The thread is a daemon started on first use, and again in a forked child
    (threads do not survive a fork): the exit hook of :mod:`baton._pipeline`
    still has it while it waits for the last submissions.
    """

    def __init__(self) -> None:
        self._jobs: "queue.SimpleQueue[Tuple[concurrent.futures.Future[Any], Callable[[], Any]]]" = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pid = 0

    def call(self, fn: Callable[[], Any]) -> "concurrent.futures.Future[Any]":
        """``fn()`` on the caller thread; its future runs its callbacks there."""
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._jobs = queue.SimpleQueue()  # a forked child's copy may hold the parent's jobs
                    threading.Thread(target=self._serve, args=(self._jobs,), name="baton-submit", daemon=True).start()
                    self._pid = os.getpid()
        future: "concurrent.futures.Future[Any]" = concurrent.futures.Future()
        self._jobs.put((future, fn))
        return future

    @staticmethod
    def _serve(jobs: "queue.SimpleQueue[Tuple[concurrent.futures.Future[Any], Callable[[], Any]]]") -> None:
        while True:
            future, fn = jobs.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn()
            except BaseException as exc:  # grpc.RpcError, or a closed channel's ValueError
                future.set_exception(exc)
            else:
                future.set_result(result)


class BrokerClient:
    """Lazily opened channels with the Broker and Admin stubs, one per broker address.

    ``address`` is ``host:port``, or several as a comma list; calls go to
    the broker that last answered, and a call that a standby refused or
    that could not reach its broker is made again at the leader the standby
    named or at the next address (docs/deployment.md, "How clients find the
    leader"): a round of the addresses in which no standby answered ends it
    with the last error; while standbys answer it goes on for up to 30 s.

    With one address, unary calls use ``wait_for_ready`` bounded by
    ``timeout``: a submit made while the broker restarts waits for it
    instead of failing at once. With several, a call that cannot reach one
    goes to the next at once. With a ``token`` every call carries it; with
    ``tls`` the channels are TLS.

    Raises:
        ValueError: ``address`` names no broker (the message names ``setting``).
    """

    def __init__(
        self,
        address: str,
        timeout: float,
        token: Optional[str] = None,
        tls: Optional[_transport.Tls] = None,
        setting: str = "broker address",
    ) -> None:
        self.address = address
        self.brokers = _failover.Brokers.parse(address, setting)
        """Which broker calls go to (read and moved under ``_lock``)."""
        self.timeout = timeout
        self.token = token
        self.tls = tls
        self._lock = threading.Lock()
        self._channels: Dict[str, Tuple[grpc.Channel, grpc.Channel, Any]] = {}
        """Per address tried: ``(raw, usable, Broker stub)``, as opened."""
        self._caller = _Caller()

    @property
    def current(self) -> str:
        """The address calls go to now."""
        with self._lock:
            return self.brokers.current

    def _open(self, address: str) -> Tuple[grpc.Channel, Any]:
        """The usable channel and the Broker stub of ``address``, opened on first use."""
        with self._lock:
            opened = self._channels.get(address)
            if opened is None:
                raw, usable = _transport.sync_channel(address, self.token, self.tls)
                opened = self._channels[address] = (raw, usable, pb.BrokerStub(usable))
            return opened[1], opened[2]

    @property
    def channel(self) -> grpc.Channel:
        """The channel to the current broker."""
        return self._open(self.current)[0]

    def close(self) -> None:
        with self._lock:
            for raw, _, _ in self._channels.values():
                raw.close()
            self._channels.clear()

    @property
    def broker(self) -> Any:
        """The Broker stub of the current broker."""
        return self._open(self.current)[1]

    def _wait_for_ready(self, address: str) -> bool:
        """Whether calls at ``address`` wait for it to (re)start: only with one broker."""
        return self.brokers.list == [address]

    def call(self, invoke: Callable[[grpc.Channel, Any, bool], T]) -> T:
        """``invoke(channel, broker_stub, wait_for_ready)`` at the current
        broker, made again elsewhere as the class says."""
        since = time.monotonic()
        while True:
            address = self.current
            channel, stub = self._open(address)
            try:
                result = invoke(channel, stub, self._wait_for_ready(address))
            except grpc.RpcError as exc:
                pause = self.failed_at(address, exc, since)
                if pause is None:
                    raise
                if pause > 0:
                    time.sleep(pause)
                continue
            self.succeeded(address)
            return result

    def succeeded(self, address: str) -> None:
        """A call at ``address`` was answered (not refused)."""
        with self._lock:
            if self.brokers.current == address:
                self.brokers.succeeded()

    def failed_at(self, address: str, error: BaseException, since: float) -> Optional[float]:
        """A call at ``address`` failed with ``error``: the pause before making
        it again (0: at once) at the broker now current, or ``None`` when the
        call ends with ``error``. ``since``: when the call started."""
        if not _failover.elsewhere(error):
            if _failover.code_of(error) not in (None, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                self.succeeded(address)  # it answered (a refusal of the call itself, not a standby's)
            return None
        with self._lock:
            if self.brokers.current != address:
                return 0.0  # another call moved on already: follow it
            following = self.brokers.failed(_failover.refusal_of(error))
        if not following.pause:
            return 0.0
        if following.standby and time.monotonic() - since < _failover.CLIENT_PATIENCE:
            return _failover.STANDBY_PAUSE
        return None

    def _unary(self, method: str, request: Any) -> Any:
        return self.call(
            lambda _, stub, ready: getattr(stub, method)(request, timeout=self.timeout, wait_for_ready=ready)
        )

    def submit(self, request: pb.SubmitChainRequest) -> pb.SubmitChainResponse:
        return cast(pb.SubmitChainResponse, self._unary("SubmitChain", request))

    def submit_many_future(
        self, requests: Sequence[pb.SubmitChainRequest], address: str
    ) -> "concurrent.futures.Future[pb.SubmitChainsResponse]":
        """``SubmitChains`` at ``address`` without waiting: a future of the
        response, made on the client's caller thread (how pipelined ``delay()``
        calls travel, see :mod:`baton._pipeline` and :class:`_Caller`)."""
        _, stub = self._open(address)
        request = pb.SubmitChainsRequest(chains=requests)
        ready = self._wait_for_ready(address)
        return self._caller.call(lambda: stub.SubmitChains(request, timeout=self.timeout, wait_for_ready=ready))

    def submit_many(self, requests: Sequence[pb.SubmitChainRequest]) -> List[pb.SubmitChainResponse]:
        """``SubmitChains``: all of ``requests`` in one durable commit, or none."""
        response = self._unary("SubmitChains", pb.SubmitChainsRequest(chains=requests))
        return list(response.chains)

    def get_chain(self, chain_id: str) -> pb.Chain:
        return cast(pb.Chain, self._unary("GetChain", pb.GetChainRequest(chain_id=chain_id)))

    def step_result(self, chain_id: str, task_id: str) -> str:
        response = self._unary("GetStepResult", pb.GetStepResultRequest(chain_id=chain_id, task_id=task_id))
        return cast(str, response.result)

    def cancel(self, chain_id: str, reason: str) -> pb.CancelChainResponse:
        response = self._unary("CancelChain", pb.CancelChainRequest(chain_id=chain_id, reason=reason))
        return cast(pb.CancelChainResponse, response)

    def admin(self, method: str, request: Any) -> Any:
        """A unary ``Admin`` call, following the leader like the others."""
        return self.call(
            lambda channel, _, ready: getattr(pb.AdminStub(channel), method)(
                request, timeout=self.timeout, wait_for_ready=ready
            )
        )

    def watch(self, chain_id: str, timeout: Optional[float], address: str) -> Iterator[pb.ChainEvent]:
        """``WatchChain`` at ``address`` (``get()`` re-opens it, following the leader)."""
        _, stub = self._open(address)
        stream = stub.WatchChain(
            pb.WatchChainRequest(chain_id=chain_id), timeout=timeout, wait_for_ready=self._wait_for_ready(address)
        )
        return cast(Iterator[pb.ChainEvent], stream)


class AsyncResult:
    """A handle on a submitted chain (or single task, which is a one-step chain).

    ``id`` is the chain id. :meth:`status` names the chain state the way the
    protocol does: ``"RUNNING"``, ``"SUCCEEDED"``, ``"FAILED"`` or
    ``"CANCELLED"`` (not Celery's PENDING/SUCCESS/FAILURE/REVOKED: a chain in
    Baton is one of these four, and the names say so).

    A pipelined ``delay()`` returns the handle before the broker has stored
    the chain; ``submission`` is that request in flight. :meth:`wait_stored`
    waits for its acknowledgment, and every other method calls it first, so a
    refused submission raises there.
    """

    def __init__(
        self,
        app: "Baton",
        chain_id: str,
        dedup: Optional[str] = None,
        *,
        submission: Optional[Submission] = None,
    ) -> None:
        self.app = app
        self.id = chain_id
        """The chain id. Chosen by the client for a pipelined submission, so
        final at once; with an ``idempotency_key`` or ``unique_key`` it may be
        an earlier chain's, and such submissions are acknowledged before
        ``apply_async`` returns."""
        self._dedup = dedup
        self._submission = submission

    def __repr__(self) -> str:
        return f"<AsyncResult {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AsyncResult) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    @classmethod
    def _from_response(cls, app: "Baton", response: pb.SubmitChainResponse) -> "AsyncResult":
        return cls(app, response.chain_id, _DEDUP.get(response.dedup))

    def wait_stored(self, timeout: Optional[float] = None) -> "AsyncResult":
        """Wait until the broker has stored the chain durably; returns ``self``.

        Immediate for a chain submitted without pipelining, or already
        acknowledged. Hand ``id`` to other processes after this: before it,
        the chain may not exist yet, or ever.

        Raises:
            grpc.RpcError: the broker refused the submission (e.g.
                ``INVALID_ARGUMENT`` naming the bad field) or was unreachable;
                raised again by every later call on this handle.
            TimeoutError: no acknowledgment within ``timeout`` seconds.
        """
        submission = self._submission
        if submission is not None:
            response = submission.wait(timeout)
            self.id = response.chain_id
            self._dedup = _DEDUP.get(response.dedup)
            self._submission = None
        return self

    @property
    def dedup(self) -> Optional[str]:
        """``None`` for a new chain; ``"idempotency_key"``, ``"unique_key"`` or
        ``"chain_id"`` (the same id was submitted before) when the broker stored
        nothing new. Waits for the acknowledgment."""
        self.wait_stored()
        return self._dedup

    def info(self) -> pb.Chain:
        """The chain's full current state (``baton.pb.Chain``: steps, attempts, failure...)."""
        self.wait_stored()
        return self.app.client.get_chain(self.id)

    def step_result(self, task_id: str) -> Any:
        """The result of one succeeded step, by its task id (``Step.task_id``).

        ``info()`` omits results over 16 KiB that the chain no longer uses
        (``Step.result_omitted``); this reads any of them.
        """
        self.wait_stored()
        return _json.loads(self.app.client.step_result(self.id, task_id))

    def status(self) -> str:
        """The chain state: RUNNING, SUCCEEDED, FAILED or CANCELLED."""
        return STATES.get(self.info().state, "UNKNOWN")

    def ready(self) -> bool:
        """Whether the chain has ended (succeeded, failed or cancelled)."""
        return self.status() in FINAL

    def cancel(self, reason: str = "") -> str:
        """Cancel the chain; returns its state afterwards (an ended chain is unchanged)."""
        self.wait_stored()
        return STATES.get(self.app.client.cancel(self.id, reason).state, "UNKNOWN")

    def get(self, timeout: Optional[float] = None) -> Any:
        """Wait for the chain to end and return the last step's result.

        Follows ``WatchChain`` (no polling); a dropped stream is re-opened
        until ``timeout`` passes, and so is one silent for ``WATCH_SLICE``
        seconds.

        Raises:
            ChainFailed: the chain failed; ``.record`` is the failure record.
            ChainCancelled: the chain was cancelled.
            TimeoutError: it had not ended within ``timeout`` seconds.
            grpc.RpcError: the submission was refused (see :meth:`wait_stored`).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        self.wait_stored(timeout)
        backoff = 0.1
        client = self.app.client
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"chain {self.id} did not end within {timeout}s")
            window = WATCH_SLICE if remaining is None else min(remaining, WATCH_SLICE)
            address = client.current
            try:
                for event in client.watch(self.id, window, address):
                    client.succeeded(address)
                    if STATES.get(event.chain.state) in FINAL:
                        return self._final(event.chain)
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else None
                if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    continue  # a silent slice: re-open at once (or time out above)
                if code != grpc.StatusCode.UNAVAILABLE:
                    raise
                # Refused by a standby, or its broker unreachable: the next
                # broker at once while a round of the addresses goes on.
                if client.failed_at(address, exc, time.monotonic()) == 0.0:
                    continue
            # The stream ended or broke before the end (broker restart): look
            # again, after a short pause so a dead broker is not spun on.
            pause = backoff if remaining is None else min(backoff, max(0.0, remaining))
            time.sleep(pause)
            backoff = min(backoff * 2, 2.0)

    def _final(self, chain: pb.Chain) -> Any:
        state = STATES.get(chain.state)
        if state == "SUCCEEDED":
            return _json.loads(chain.result)
        if state == "FAILED":
            raise ChainFailed(failure_record(chain.failure))
        raise ChainCancelled(self.id, chain.cancel_reason)
