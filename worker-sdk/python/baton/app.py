"""The application object: :class:`Baton` (task registry + broker client) and :class:`Task`.

As in Celery, one module-level app is shared by the code that submits work
and the workers that run it: ``@app.task`` registers a function under a
name, and both sides derive the same name and declared options from the same
code. Creating the app has no side effect (no connection, no thread), so
importing a task module is always safe.
"""

from __future__ import annotations

import inspect
import logging
import os
import sys
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Optional, TypeVar, Union, overload

import grpc

from . import _transport, options as _options, pb
from ._ids import new_chain_id
from ._pipeline import Pipeline
from .canvas import Chain, Signature
from .client import AsyncResult, BrokerClient
from .client import AsyncResult as _AsyncResult
from .errors import PartialSubmission
from .throttle import declared_on

if TYPE_CHECKING:
    from .worker import Worker

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_ADDRESS = "127.0.0.1:7070"
"""Used when neither ``Baton(address)`` nor ``$BATON_ADDR`` names the broker."""

ADDRESS_VARIABLE = "BATON_ADDR"
"""The broker's address in the environment: the same variable as the
``baton`` command's and the Rust SDK's."""

DEPRECATED_ADDRESS_VARIABLE = "BATON_ADDRESS"
"""The name this SDK read before: still honoured when ``$BATON_ADDR`` is
not set, with a warning."""

_log = logging.getLogger("baton")
_warned_deprecated = False


def env_address() -> Optional[str]:
    """The broker address the environment names: ``$BATON_ADDR``, else the
    deprecated ``$BATON_ADDRESS`` (logging a warning, once), else ``None``."""
    global _warned_deprecated
    address = os.environ.get(ADDRESS_VARIABLE)
    if address:
        return address
    old = os.environ.get(DEPRECATED_ADDRESS_VARIABLE)
    if old:
        if not _warned_deprecated:
            _warned_deprecated = True
            _log.warning(
                "$%s is deprecated, use $%s (broker address %s)", DEPRECATED_ADDRESS_VARIABLE, ADDRESS_VARIABLE, old
            )
        return old
    return None

MAX_BATCH = 1000
"""Most chains in one ``SubmitChains`` call (the broker's limit)."""

MAX_BATCH_BYTES = 1024 * 1024
"""Largest encoded ``SubmitChains`` request :meth:`Baton.submit_many` sends:
the broker's default request limit (``--max-payload``) with room to spare. A
batch closes early when the next chain would pass it."""


def _main_module_name() -> str:
    """The importable name of ``__main__``, so a script and its workers agree on task names.

    ``python demo.py`` registers its tasks as ``demo.x`` (not ``__main__.x``),
    the name a worker started with ``--app demo:app`` derives for them.
    """
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name and spec.name != "__main__":
        name = str(spec.name)
        return name[: -len(".__main__")] if name.endswith(".__main__") else name
    path = getattr(main, "__file__", None)
    if path:
        return os.path.splitext(os.path.basename(str(path)))[0]
    return "__main__"


def default_name(fn: Callable[..., Any]) -> str:
    """``module.function``, the default task name (Celery's rule)."""
    module = fn.__module__
    if module == "__main__":
        module = _main_module_name()
    return f"{module}.{fn.__name__}"


class Task:
    """A registered task: the function plus its name and declared options.

    Calling the task runs the function here and now, like a Celery task; use
    :meth:`delay` / :meth:`apply_async` to run it on a worker, and :meth:`s` /
    :meth:`si` to use it in a chain. ``options`` are the task's declared
    defaults (``heavy``, ``throttle``, ``max_retries``...); the worker
    registers them with the broker, and submissions carry them too, so they
    apply whoever submits.
    """

    def __init__(self, app: "Baton", fn: Callable[..., Any], name: str, options: Mapping[str, Any]) -> None:
        self.app = app
        self.fn = fn
        self.name = name
        self.options: dict[str, Any] = _options.check(options, f"task {name}")
        self.is_async = inspect.iscoroutinefunction(fn)
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", name)
        self.__qualname__ = getattr(fn, "__qualname__", name)
        self.__module__ = fn.__module__
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"<Task {self.name}>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A mutable signature: the previous step's result is prepended to ``args``."""
        return Signature(self.name, args, kwargs, immutable=False, app=self.app, task=self)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """An immutable signature: runs with exactly these arguments."""
        return Signature(self.name, args, kwargs, immutable=True, app=self.app, task=self)

    def signature(
        self,
        args: Iterable[Any] = (),
        kwargs: Optional[Mapping[str, Any]] = None,
        *,
        immutable: bool = False,
        **options: Any,
    ) -> Signature:
        return Signature(
            self.name, args, kwargs, immutable=immutable, options=options, app=self.app, task=self
        )

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult:
        """Run ``task(*args, **kwargs)`` on a worker; returns the chain handle."""
        return self.si(*args, **kwargs).apply_async()

    def apply_async(
        self,
        args: Optional[Iterable[Any]] = None,
        kwargs: Optional[Mapping[str, Any]] = None,
        **options: Any,
    ) -> AsyncResult:
        """Like :meth:`delay` with options: step options (``countdown``, ``queue``,
        ``eta``, ...) and the chain-level ones of :meth:`Chain.apply_async`."""
        return self.signature(immutable=True).apply_async(args, kwargs, **options)


class Baton:
    """A Baton application: registers tasks and talks to one broker.

    ``address`` is the broker's ``host:port``, or several brokers sharing
    one database as a comma list (``"h1:7070,h2:7070"``: calls follow the
    leader, see the README); it defaults to
    ``$BATON_ADDR`` (the deprecated ``$BATON_ADDRESS`` is read too, with a
    warning), then ``127.0.0.1:7070`` (the broker's default), read when the first call is
    made, and may be reassigned until then (the worker CLI's ``--broker``
    does). ``timeout`` bounds every unary call, including the wait for an
    unreachable broker.

    ``token`` is the secret of a broker token (``baton token new``), sent
    on every call; it defaults to ``$BATON_TOKEN``. ``tls`` turns TLS on:
    ``True`` trusts the system's roots; a dict (or :class:`baton.Tls`) with
    ``ca`` (the CA that signed the broker's certificate), ``cert`` and
    ``key`` (a client certificate, which a broker with mutual TLS requires
    of workers) and ``domain`` (the name in the broker's certificate, when
    the address does not carry it). ``ca``, ``cert`` and ``key`` are file
    paths or PEM bytes.

    ``pipeline`` (default ``True``): ``delay()`` and ``apply_async()`` send
    the chain and return at once, with the chain id chosen here; the
    broker's acknowledgment is awaited by ``AsyncResult.wait_stored()``,
    ``get()`` and the like, and by :meth:`flush`. ``False`` makes every
    submission one synchronous round trip, as a durable call.
    """

    def __init__(
        self,
        address: Optional[str] = None,
        *,
        timeout: float = 30.0,
        token: Optional[str] = None,
        tls: Any = None,
        pipeline: bool = True,
    ) -> None:
        self._address = address
        self.timeout = timeout
        self._token = _transport.check_token(token)
        self._tls = _transport.tls_config(tls)
        self.pipeline = pipeline
        self.tasks: dict[str, Task] = {}
        self._client: Optional[BrokerClient] = None
        self._in_flight = Pipeline()

    def __repr__(self) -> str:
        return f"<Baton {self.address} tasks={len(self.tasks)}>"

    # -- broker address and channel --------------------------------------

    @property
    def address(self) -> str:
        return self._address or env_address() or DEFAULT_ADDRESS

    @address.setter
    def address(self, value: str) -> None:
        self.close()
        self._address = value

    @property
    def token(self) -> Optional[str]:
        """The token sent on every call: ``Baton(token=...)``, else ``$BATON_TOKEN``."""
        return self._token or _transport.check_token(os.environ.get("BATON_TOKEN"))

    @token.setter
    def token(self, value: Optional[str]) -> None:
        self.close()
        self._token = _transport.check_token(value)

    @property
    def tls(self) -> Optional[_transport.Tls]:
        """The TLS settings (a :class:`baton.Tls`), or ``None`` for plaintext."""
        return self._tls

    @tls.setter
    def tls(self, value: Any) -> None:
        self.close()
        self._tls = _transport.tls_config(value)

    @property
    def client(self) -> BrokerClient:
        if self._client is None:
            setting = "Baton(address)" if self._address else f"${ADDRESS_VARIABLE}"
            self._client = BrokerClient(self.address, self.timeout, self.token, self.tls, setting)
        return self._client

    @property
    def channel(self) -> "grpc.Channel":
        """The gRPC channel, for stubs of ``baton.pb`` (e.g. ``pb.AdminStub``)."""
        return self.client.channel

    def close(self) -> None:
        """Wait for the submissions in flight, then close the channel; the next
        call opens a new one. Failed submissions are not raised (see :meth:`flush`)."""
        self._in_flight.drain()
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> "Baton":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- tasks ---------------------------------------------------------------

    @overload
    def task(self, fn: F, /) -> Task: ...

    @overload
    def task(
        self, *, name: Optional[str] = None, **options: Any
    ) -> Callable[[Callable[..., Any]], Task]: ...

    def task(
        self, fn: Optional[Callable[..., Any]] = None, *, name: Optional[str] = None, **options: Any
    ) -> Union[Task, Callable[[Callable[..., Any]], Task]]:
        """Register a task, bare (``@app.task``) or with options (``@app.task(heavy=True)``).

        ``name`` defaults to ``module.function``. ``options`` are those of
        :mod:`baton.options`, e.g. ``heavy=True``, ``queue="x"``,
        ``throttle=1`` (the whole-task throttle), ``max_retries=3``. A
        ``@throttle`` decorator under ``@app.task`` declares the throttle too.
        """

        def register(func: Callable[..., Any]) -> Task:
            opts = _options.check(options, f"@app.task on {getattr(func, '__name__', func)!r}")
            declared = declared_on(func)
            if declared is not None and opts.get("throttle") is None:
                opts["throttle"] = declared
            task_name = name or default_name(func)
            if task_name in self.tasks and self.tasks[task_name].fn is not func:
                raise ValueError(f"task name {task_name!r} is already registered")
            task = Task(self, func, task_name, opts)
            self.tasks[task_name] = task
            return task

        if fn is not None:
            return register(fn)
        return register

    def signature(
        self,
        name: str,
        args: Iterable[Any] = (),
        kwargs: Optional[Mapping[str, Any]] = None,
        *,
        immutable: bool = False,
        **options: Any,
    ) -> Signature:
        """A signature for a task known only by name (e.g. one a Rust worker runs)."""
        return Signature(
            name, args, kwargs, immutable=immutable, options=options, app=self, task=self.tasks.get(name)
        )

    # -- submitting and following ----------------------------------------------

    def submit(self, request: pb.SubmitChainRequest) -> _AsyncResult:
        """Send a prepared ``SubmitChain`` request (``chain(...).apply_async`` builds one).

        Without a ``chain_id`` the request is sent as a copy carrying a new
        one (so one request object can be submitted again as a new chain);
        with one, as it is: a repeat of a stored id stores nothing and its
        ``dedup`` is ``"chain_id"``.

        Pipelined (see the class), except with ``pipeline=False`` or when the
        request has an ``idempotency_key`` or ``unique_key``: the broker may
        answer with an earlier chain's id then, and the handle must not carry
        a different one in the meantime, so those are acknowledged before
        this returns.
        """
        if not request.chain_id:
            request = _with_new_id(request)
        if self.pipeline and not (request.idempotency_key or request.unique_key):
            submission = self._in_flight.send(self.client, request)
            return _AsyncResult(self, request.chain_id, submission=submission)
        return _AsyncResult._from_response(self, self.client.submit(request))

    def flush(self, timeout: Optional[float] = None) -> None:
        """Wait for the acknowledgment of every submission in flight.

        Then raises the earliest failed submission not raised yet (by this or
        by ``wait_stored()``), as ``delay()`` raised it before pipelining.
        Later failures were logged as they happened and count as reported.

        Raises:
            grpc.RpcError: a submission was refused or the broker unreachable.
            TimeoutError: some were still unanswered after ``timeout`` seconds.
        """
        self._in_flight.flush(timeout)

    def submit_many(self, items: Iterable[Union[Signature, Chain]], **options: Any) -> list[_AsyncResult]:
        """Submit many chains with ``SubmitChains``; returns once all are stored.

        ``items`` are signatures (each a one-step chain) or chains;
        ``options`` are those of :meth:`Chain.apply_async` (``heavy``,
        ``context``, ``queue``, ``countdown``, ``on_success``...), applied to
        each. The results come in the order of ``items``.

        Chains go in batches of up to 1000 (and about 1 MiB), each stored with
        one durable commit, all of its chains or none. A batch after the first
        that is refused raises :class:`~baton.PartialSubmission`, whose
        ``stored`` lists the chains of the batches before it.

        Raises:
            grpc.RpcError: the first batch was refused (``INVALID_ARGUMENT``
                naming ``chains[i]``); nothing was stored.
            PartialSubmission: a later batch was refused (also a ``grpc.RpcError``).
        """
        requests = [_as_chain(item).to_request(**options) for item in items]
        for request in requests:
            request.chain_id = new_chain_id()
        stored: list[_AsyncResult] = []
        for batch in _batches(requests):
            try:
                responses = self.client.submit_many(batch)
            except grpc.RpcError as exc:
                if not stored:
                    raise
                raise PartialSubmission(stored, len(requests), exc) from exc
            stored += [_AsyncResult._from_response(self, response) for response in responses]
        return stored

    # -- periodic schedules ------------------------------------------------------

    def schedule(
        self,
        name: str,
        item: Union[Signature, Chain],
        *,
        cron: Optional[str] = None,
        every: Optional[float] = None,
        timezone: Optional[str] = None,
        catch_up: int = 0,
        deadline: Optional[float] = None,
        paused: bool = False,
        **options: Any,
    ) -> pb.ScheduleInfo:
        """Add a periodic schedule, or replace the one with the same name.

        The broker submits ``item`` (a signature or a chain, with ``options``
        as :meth:`Chain.apply_async` takes them: ``on_success``, ``context``,
        ``heavy``...) once per fire time, and keeps the schedule across
        restarts; with several brokers only the leader fires. Give ``cron``
        (five fields, or six with seconds first; in ``timezone``, an IANA
        name, UTC by default) or ``every`` (seconds, at least 1).
        ``catch_up``: how many fire times missed while the broker was down
        still fire (the latest ones; 0 skips them). ``deadline``: seconds
        each chain has after it is submitted. Returns the schedule with its
        next fire times (``next_fires_unix_ms``).

        Raises:
            grpc.RpcError: ``INVALID_ARGUMENT`` naming what is wrong (the cron
                expression, the time zone, the chain).
        """
        request = _as_chain(item).to_request(**options)
        request.chain_id = ""  # each fire gets its own
        schedule = pb.Schedule(
            name=name,
            cron=cron or "",
            timezone=timezone or "",
            every_ms=round((every or 0) * 1000),
            chain=request,
            deadline_ms=round((deadline or 0) * 1000),
            catch_up=catch_up,
            paused=paused,
        )
        info: pb.ScheduleInfo = self.client.admin("PutSchedule", pb.PutScheduleRequest(schedule=schedule))
        return info

    def schedules(self) -> list[pb.ScheduleInfo]:
        """Every schedule, by name, with its next fire times."""
        return list(self.client.admin("ListSchedules", pb.ListSchedulesRequest()).schedules)

    def pause_schedule(self, name: str) -> pb.ScheduleInfo:
        """Pause a schedule: it fires nothing, and the fire times it passes meanwhile are skipped."""
        return self._pause(name, True)

    def resume_schedule(self, name: str) -> pb.ScheduleInfo:
        """Resume a paused schedule from its next fire time."""
        return self._pause(name, False)

    def remove_schedule(self, name: str) -> None:
        """Remove a schedule; the chains it submitted are left alone."""
        self.client.admin("RemoveSchedule", pb.RemoveScheduleRequest(name=name))

    def _pause(self, name: str, paused: bool) -> pb.ScheduleInfo:
        info: pb.ScheduleInfo = self.client.admin("PauseSchedule", pb.PauseScheduleRequest(name=name, paused=paused))
        return info

    def AsyncResult(self, chain_id: str) -> _AsyncResult:  # noqa: N802 - Celery's name
        """A handle on an existing chain by id."""
        return _AsyncResult(self, chain_id)

    # -- workers ---------------------------------------------------------------

    def worker(
        self,
        queues: Optional[Iterable[str]] = None,
        concurrency: int = 1,
        *,
        name: Optional[str] = None,
        prefetch: Optional[int] = None,
        pool: str = "threads",
    ) -> "Worker":
        """A worker for this app's tasks; call ``.run()`` to serve until SIGTERM.
        ``prefetch``: assignments held beyond ``concurrency`` (None: the default
        window); ``pool``: ``"threads"`` or ``"processes"`` (see :class:`Worker`)."""
        from .worker import Worker

        return Worker(self, queues=queues, concurrency=concurrency, name=name, prefetch=prefetch, pool=pool)


def _with_new_id(request: pb.SubmitChainRequest) -> pb.SubmitChainRequest:
    copy = pb.SubmitChainRequest()
    copy.CopyFrom(request)
    copy.chain_id = new_chain_id()
    return copy


def _as_chain(item: Union[Signature, Chain]) -> Chain:
    if isinstance(item, Chain):
        return item
    if isinstance(item, Signature):
        return Chain([item])
    raise TypeError(f"submit_many takes signatures and chains, not {type(item).__name__}")


def _batches(requests: list[pb.SubmitChainRequest]) -> Iterable[list[pb.SubmitChainRequest]]:
    """Consecutive runs of at most ``MAX_BATCH`` requests and about ``MAX_BATCH_BYTES``.

    A chain larger than the byte budget on its own still goes, alone: the
    broker judges it against its own limit.
    """
    batch: list[pb.SubmitChainRequest] = []
    size = 0
    for request in requests:
        cost = request.ByteSize() + 8  # the field's tag and length prefix, generously
        if batch and (len(batch) == MAX_BATCH or size + cost > MAX_BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(request)
        size += cost
    if batch:
        yield batch
