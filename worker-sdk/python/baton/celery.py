"""Celery's names on Baton: Celery code moves by changing its import lines, not its bodies.

NodeConductor and Waldur define hundreds of tasks in Celery's words
(``@shared_task(bind=True)``, ``self.retry(countdown=5)``,
``is_heavy_task=True``, ``apply_async(link=..., link_error=...)``, task
classes with ``run``). This module gives those words their Baton meaning::

    from baton.celery import shared_task, chain, throttle, AsyncResult   # was: from celery import ...

What each maps to, and why:

* **Tasks.** ``shared_task`` / ``Celery().task`` / subclasses of :class:`Task`
  register ordinary Baton tasks (one shared registry, served by
  ``python -m baton worker --app MODULE``). A class-based task is registered
  when its class is defined, as Celery 3 did (``abstract = True`` skips it),
  and each run gets its own shallow copy of the registered instance: Baton
  runs tasks on threads, and Waldur's tasks keep per-run state on ``self``
  (``self.args``, ``self.result``) that concurrent runs must not share.
* **Failures.** Celery fails a task at once unless the exception is in
  ``autoretry_for``; Baton retries every failure ``max_retries`` allows. So a
  Celery task's exceptions are reported not retryable (:func:`outcomes.mark_final`),
  except ``autoretry_for`` ones, which become Baton's retryable failures: the
  broker retries them with Celery's delays (``retry_backoff`` doubling up to
  ``retry_backoff_max``, else ``default_retry_delay``).
* **self.retry(countdown=...)** is Baton's retry-later outcome (``Retry``):
  the step keeps its place in its chain and the broker runs it again after
  the countdown; no worker sleeps and nothing is re-posted. The budget is
  Celery's: ``request.retries`` counts the step's polls and retried failures
  as the broker reports them, and once it reaches ``max_retries`` (default 3;
  ``None`` = unbounded) ``retry`` raises ``exc`` (or
  :class:`MaxRetriesExceededError`) and the step fails for good. The budget
  is checked here, not by the broker's ``max_polls`` (set unbounded), because
  Celery lets a single call raise it (``self.retry(max_retries=10000)``),
  which a budget declared up front could not honour.
* **Callbacks.** ``link`` is on_success and ``link_error`` on_failure, both
  guaranteed by the broker to run once (one of the two) after the chain's
  steps. A mutable ``link_error`` (``.s``) is called the way Celery calls it,
  with the failed task's id first: the worker receives Baton's failure
  record, keeps it, and passes the id; ``AsyncResult(failed_id).result`` and
  ``.traceback`` then read that record (NodeConductor's
  ``ErrorStateTransitionTask.run(failed_id, instance)`` runs unchanged).
  Baton's own form (``on_failure=`` receiving the record dict) still works.
* **Results.** There is no result backend: :class:`AsyncResult` reads the
  chain from the broker (``GetChain``/``WatchChain``) and names its state the
  Celery way (PENDING, SUCCESS, FAILURE, REVOKED).
* **What Baton cannot honour** (``acks_late``, a result backend URL,
  ``rate_limit``, ``expires``...) is accepted with a one-time
  :class:`CeleryCompatWarning` that says what Baton does instead.
* **Groups and chords** run on the broker: ``group(...)`` members side by
  side, ``chord(header, body)`` or ``group(...) | body`` hands the list of
  their results to ``body``; the first member that fails fails the group and
  the others are cancelled. A chain with its own ``link``/``link_error``
  inside another chain runs as a nested executor, its callbacks its own.
"""

from __future__ import annotations

import builtins
import copy
import importlib
import inspect
import socket
import sys
import threading
import warnings
from collections import OrderedDict
from contextvars import ContextVar
from datetime import datetime
from typing import (
    Any,
    Callable,
    ClassVar,
    Dict,
    Iterable,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Type,
    TypeVar,
    cast,
    Union,
    overload,
)

import grpc

from . import _json, pb
from .app import Baton, default_name
from .app import Task as _BatonTask
from .canvas import Chain as _BatonChain
from .canvas import Group as _BatonGroup
from .canvas import Nested as _BatonNested
from .canvas import Signature as _BatonSignature
from .canvas import nested as _nested
from .client import STATES, failure_record
from .client import AsyncResult as _BatonResult
from .context import TaskContext, current_task as _current_run
from .errors import Cancelled, ChainCancelled, ChainFailed, Fatal, Retry
from .options import OPTION_NAMES
from .outcomes import is_final, mark_final
from .throttle import Throttle, declared_on
from .throttle import throttle as _baton_throttle

__all__ = [
    "AsyncResult",
    "Celery",
    "CeleryCompatWarning",
    "Chain",
    "MaxRetriesExceededError",
    "Request",
    "Retry",
    "Signature",
    "Task",
    "TaskRevokedError",
    "chain",
    "chord",
    "current_app",
    "current_task",
    "group",
    "shared_task",
    "signature",
    "states",
    "throttle",
]

F = TypeVar("F", bound=Callable[..., Any])

UNBOUNDED = 2**32 - 1
"""The largest budget the protocol's ``uint32`` fields hold: Celery's ``max_retries=None``."""

ERRBACK_CONTEXT_KEY = "baton.celery.link_error"
"""Chain-context key set when the first ``link_error`` signature is mutable:
its worker passes the failed task's id (Celery's call shape) instead of the
failure record (Baton's)."""

ERRBACK_TASK_ID = "task_id"


# -- warnings ------------------------------------------------------------------


class CeleryCompatWarning(UserWarning):
    """A Celery option or call Baton accepts but cannot honour as Celery did.

    Each is issued once per process and says what Baton does instead.
    """


_warned: set[str] = set()
_warned_lock = threading.Lock()


def _warn_once(key: str, message: str) -> None:
    """Warn once per process, pointing at the first caller outside this package."""
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    frame: Any = sys._getframe(0)
    level = 1
    while frame is not None and str(frame.f_globals.get("__name__", "")).startswith("baton."):
        frame = frame.f_back
        level += 1
    warnings.warn(message, CeleryCompatWarning, stacklevel=level)


def _reset_warnings() -> None:
    """Forget which warnings were issued (for tests)."""
    with _warned_lock:
        _warned.clear()


# What Baton does instead, for each Celery task option it accepts without honouring.
_TASK_OPTION_NOTES: Dict[str, str] = {
    "acks_late": "a run is acknowledged only when its outcome is reported, and the run of a worker that "
    "dies goes back to its queue when its lease lapses: acks_late's behaviour, always on",
    "reject_on_worker_lost": "the run of a worker that dies is always redelivered (attempt + 1) when its lease lapses",
    "acks_on_failure_or_timeout": "a failed run is recorded in the chain's failure record; nothing is requeued",
    "track_started": "the broker always records when a step starts (AsyncResult(...).baton.info()); .state says "
    "PENDING until the chain ends",
    "serializer": "arguments and results are always JSON",
    "compression": "messages are not compressed",
    "soft_time_limit": "Baton has no soft time limit; use time_limit (the broker cancels the run, which sees "
    "current_task().cancelled)",
    "expires": "ignored; a chain deadline (deadline=) fails the chain and runs its link_error instead of "
    "dropping the task silently",
    "typing": "arguments are not checked against the function's signature when the task is called",
    "throws": "every failure is recorded with its traceback",
    "store_errors_even_if_ignored": "errors are always kept in the chain's failure record",
    "send_events": "Baton sends no Celery events; follow chains with AsyncResult or WatchChain",
    "trail": "child results are not tracked",
    "backend": "Baton has no result backend: results and failure records live in the broker",
    "resultrepr_maxsize": "not used",
    "lazy": "not used",
    "shadow": "tasks are shown under their own name",
}

# What Baton does instead, for each apply_async option it cannot honour.
_APPLY_OPTION_NOTES: Dict[str, str] = {
    "expires": "ignored; use deadline= (the chain fails and its link_error runs) instead",
    "task_id": "ignored; Baton picks the chain id (AsyncResult.id) and the broker the task ids",
    "routing_key": "ignored; name the queue with queue=",
    "exchange": "ignored; name the queue with queue=",
    "serializer": "arguments are always JSON",
    "compression": "messages are not compressed",
    "headers": "ignored; use context= (a str->str map every step sees)",
    "shadow": "tasks are shown under their own name",
    "retry": "a submission waits for an unreachable broker up to the app's timeout",
    "retry_policy": "a submission waits for an unreachable broker up to the app's timeout",
    "add_to_parent": "child results are not tracked",
    "soft_time_limit": "Baton has no soft time limit; use time_limit",
    "reply_to": "ignored",
    "group_id": "ignored: the broker names a group's members by their own chain ids",
    "chord": "ignored: build the chord with chord(header, body) or group(...) | body",
    "root_id": "ignored; chains carry their own id",
    "parent_id": "ignored; chains carry their own id",
}

# Options a chain's apply_async takes as Baton's chain-level ones.
_CHAIN_LEVEL = frozenset(
    {"on_success", "on_failure", "heavy", "context", "idempotency_key", "unique_key", "deadline", "queue",
     "countdown", "eta", "app"}
)


# -- exceptions and states -------------------------------------------------------


class MaxRetriesExceededError(Exception):
    """``self.retry()`` without ``exc`` once ``request.retries`` reached ``max_retries``."""


class TaskRevokedError(Exception):
    """``AsyncResult.get()`` of a chain that was cancelled (Celery's revoke)."""


class RemoteError(Exception):
    """Base of the exceptions rebuilt from a failure record whose error type is
    not a Python builtin: ``type(exc).__name__`` is the remote type's name,
    ``str(exc)`` its message and ``exc.record`` the whole failure record."""

    record: Dict[str, Any]


_remote_classes: Dict[str, Type[RemoteError]] = {}
_remote_lock = threading.Lock()


def rebuild_exception(record: Mapping[str, Any]) -> BaseException:
    """The exception a failure record describes, as Celery's result backend gave it back.

    A builtin type (``ValueError``...) is rebuilt as itself; any other is a
    subclass of :class:`RemoteError` with the same name. ``str(exc)`` is the
    recorded message and ``exc.record`` the record (traceback included).
    """
    name = str(record.get("error_type") or "Exception")
    message = str(record.get("message") or "")
    exc: Optional[BaseException] = None
    builtin = getattr(builtins, name, None)
    if isinstance(builtin, type) and issubclass(builtin, Exception) and builtin is not KeyError:
        try:
            exc = builtin(message)
        except Exception:  # noqa: BLE001 - a builtin with other constructor arguments
            exc = None
    if exc is None:
        with _remote_lock:
            cls = _remote_classes.get(name)
            if cls is None:
                cls = type(name if name.isidentifier() else "RemoteError", (RemoteError,), {})
                _remote_classes[name] = cls
        exc = cls(message)
    setattr(exc, "record", dict(record))
    return exc


class states:  # noqa: N801 - Celery's module name, ``from celery import states``
    """Celery's state names, as :attr:`AsyncResult.state` reports them."""

    PENDING = "PENDING"
    STARTED = "STARTED"
    RETRY = "RETRY"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    REVOKED = "REVOKED"
    READY_STATES = frozenset({SUCCESS, FAILURE, REVOKED})
    UNREADY_STATES = frozenset({PENDING, STARTED, RETRY})
    EXCEPTION_STATES = frozenset({RETRY, FAILURE, REVOKED})
    PROPAGATE_STATES = frozenset({FAILURE, REVOKED})
    ALL_STATES = frozenset({PENDING, STARTED, RETRY, SUCCESS, FAILURE, REVOKED})


_CHAIN_STATES = {"RUNNING": states.PENDING, "SUCCEEDED": states.SUCCESS, "FAILED": states.FAILURE,
                 "CANCELLED": states.REVOKED}


# -- failure records seen by errbacks ------------------------------------------------

_FAILURES_KEPT = 1024
_failures: "OrderedDict[str, Dict[str, Any]]" = OrderedDict()
_failures_lock = threading.Lock()


def _remember_failure(record: Mapping[str, Any]) -> None:
    """Keep the record an errback received, so ``AsyncResult(failed_id)`` in
    its body reads it without a result backend (bounded, newest kept)."""
    task_id = str(record.get("task_id") or "")
    if not task_id:
        return
    with _failures_lock:
        _failures[task_id] = dict(record)
        _failures.move_to_end(task_id)
        while len(_failures) > _FAILURES_KEPT:
            _failures.popitem(last=False)


def _known_failure(task_id: str) -> Optional[Dict[str, Any]]:
    with _failures_lock:
        return _failures.get(task_id)


# -- apps ------------------------------------------------------------------------------


class _Conf(dict):  # type: ignore[type-arg]
    """``app.conf``: settings are kept but Baton reads none of them, so setting
    one warns once (a Celery setting silently dropped would be wrong)."""

    def _note(self, key: str) -> None:
        _warn_once(f"conf:{key}", f"Celery setting {key!r} is not read by Baton (the broker's own flags and "
                                  f"$BATON_ADDR configure it); see docs/celery-migration.md")

    def __setitem__(self, key: str, value: Any) -> None:
        self._note(key)
        super().__setitem__(key, value)

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key in dict(*args, **kwargs):
            self._note(str(key))
        super().update(*args, **kwargs)


_registry: Dict[str, _BatonTask] = {}
"""Every Celery-style task of the process: ``shared_task`` registers with
every app in Celery, so all apps here share one registry."""


class Celery(Baton):
    """``Celery('proj')``: a :class:`~baton.Baton` app that takes Celery's arguments.

    ``broker`` and ``backend`` URLs are accepted with a warning: the broker
    is Baton's, at ``address`` or ``$BATON_ADDR``, and there is no result
    backend to run. ``include`` modules are imported at once, and the app
    becomes :data:`current_app` (unless ``set_as_current=False``). All apps
    share the registry of ``shared_task`` tasks, so ``python -m baton worker
    --app proj`` serves them all. Other keyword arguments are Baton's
    (``timeout``, ``token``, ``tls``, ``pipeline``).
    """

    def __init__(
        self,
        main: Optional[str] = None,
        *,
        broker: Optional[str] = None,
        backend: Optional[str] = None,
        include: Optional[Iterable[str]] = None,
        set_as_current: bool = True,
        address: Optional[str] = None,
        **options: Any,
    ) -> None:
        baton_options = {k: options.pop(k) for k in ("timeout", "token", "tls", "pipeline") if k in options}
        super().__init__(address, **baton_options)
        self.main = main
        self.tasks = _registry
        self.conf = _Conf()
        if broker:
            _warn_once("app:broker", f"Celery(broker={broker!r}) is ignored: Baton talks to its own broker at "
                                     f"Celery(address=...) or $BATON_ADDR (now {self.address})")
        if backend:
            _warn_once("app:backend", f"Celery(backend={backend!r}) is ignored: "
                                      f"{_TASK_OPTION_NOTES['backend']}")
        for key in sorted(options):
            _warn_once(f"app:{key}", f"Celery({key}=...) is not read by Baton")
        for module in include or ():
            importlib.import_module(module)
        if set_as_current:
            _current.app = self

    def __repr__(self) -> str:
        return f"<Celery {self.main or ''} {self.address} tasks={len(self.tasks)}>"

    # Celery's signature for these differs from Baton's; both are documented.
    def task(self, *args: Any, **options: Any) -> Any:
        """``@app.task`` / ``@app.task(bind=True, ...)``: as :func:`shared_task`, on this app."""
        return _task_decorator(args, options, self)

    def AsyncResult(self, id: str) -> "_Result":  # type: ignore[override]  # noqa: N802,A002
        return AsyncResult(id, app=self)

    def signature(
        self,
        name: str,
        args: Iterable[Any] = (),
        kwargs: Optional[Mapping[str, Any]] = None,
        *,
        immutable: bool = False,
        **options: Any,
    ) -> "Signature":
        """A signature of a task known by name only (Celery's ``app.signature``)."""
        sig = Signature(name, args, kwargs, immutable=immutable, app=self, task=self.tasks.get(name))
        return sig.set(**options) if options else sig

    def send_task(
        self,
        name: str,
        args: Optional[Iterable[Any]] = None,
        kwargs: Optional[Mapping[str, Any]] = None,
        **options: Any,
    ) -> "_Result":
        """Submit a task by name (Celery's ``send_task``), with ``apply_async``'s options."""
        return self.signature(name, args or (), kwargs, immutable=True).apply_async(**options)

    def autodiscover_tasks(self, packages: Any = None, related_name: str = "tasks", force: bool = False) -> None:
        """Import ``<package>.<related_name>`` for each package (or a callable returning them), now.

        Celery defers this until the app is finalized; Baton has no such step,
        and a worker must know its tasks when it says hello.
        """
        found = packages() if callable(packages) else packages or ()
        for package in found:
            try:
                importlib.import_module(f"{package}.{related_name}")
            except ModuleNotFoundError as exc:
                if exc.name != f"{package}.{related_name}":
                    raise

    def config_from_object(self, obj: Any, *args: Any, **kwargs: Any) -> None:
        _warn_once("app:config_from_object", "app.config_from_object() is ignored: Baton reads no Celery "
                                              "settings (the broker's flags and $BATON_ADDR configure it)")


class _Current:
    """Which app ``shared_task`` tasks submit through: the last ``Celery()`` made, else a default."""

    app: Celery


_current = _Current()
_current.app = Celery("default", set_as_current=False)


def get_current_app() -> Celery:
    return _current.app


class _CurrentAppProxy:
    """``current_app``: forwards to the app made last (Celery's proxy)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(_current.app, name)

    def __repr__(self) -> str:
        return repr(_current.app)

    def _get_current_object(self) -> Celery:
        return _current.app


current_app: Any = _CurrentAppProxy()


class _CurrentTaskProxy:
    """``current_task``: the Celery-style task whose body is running in this thread, falsy
    outside one (NodeConductor's ``if current_task:`` and ``current_task.retry()``)."""

    def _get_current_object(self) -> Optional["Task"]:
        try:
            run = _current_run()
        except RuntimeError:
            return None
        task = _registry.get(run.name)
        return task if isinstance(task, Task) else None

    def __bool__(self) -> bool:
        return self._get_current_object() is not None

    def __getattr__(self, name: str) -> Any:
        task = self._get_current_object()
        if task is None:
            raise RuntimeError("current_task is used outside a baton.celery task run by a Baton worker")
        return getattr(task, name)

    def __repr__(self) -> str:
        return repr(self._get_current_object())


current_task: Any = _CurrentTaskProxy()


# -- the request of a running task -----------------------------------------------------


class Request:
    """``self.request`` of a running task: what Celery code reads, from the Baton run.

    ``id`` is the task id (stable across attempts, the failure record's
    ``task_id``); ``retries`` the step's retry-later polls plus its retried
    failures so far (what Celery's ``retries`` counted); ``root_id`` and
    ``chain_id`` the chain's id; ``attempt`` Baton's run number (from 1,
    counting redeliveries too).
    """

    def __init__(
        self,
        id: Optional[str] = None,  # noqa: A002 - Celery's name
        retries: int = 0,
        args: Sequence[Any] = (),
        kwargs: Optional[Mapping[str, Any]] = None,
        *,
        called_directly: bool = True,
        run: Optional[TaskContext] = None,
    ) -> None:
        self.id = id
        self.retries = retries
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        self.called_directly = called_directly
        self.is_eager = False
        self.run = run
        self.chain_id = run.chain_id if run is not None else None
        self.root_id = self.chain_id
        self.parent_id: Optional[str] = None
        self.group: Optional[str] = None
        self.attempt = run.attempt if run is not None else 0
        self.hostname = socket.gethostname()
        self.delivery_info = {"routing_key": run.queue if run is not None else None, "exchange": "",
                              "priority": None}
        self.correlation_id = id

    def __repr__(self) -> str:
        return f"<Request id={self.id} retries={self.retries} called_directly={self.called_directly}>"


_request: ContextVar[Request] = ContextVar("baton_celery_request")


# -- tasks -------------------------------------------------------------------------------


_TASK_ATTRIBUTES = frozenset(
    {"max_retries", "default_retry_delay", "autoretry_for", "retry_kwargs", "retry_backoff", "retry_backoff_max",
     "retry_jitter", "queue", "ignore_result", "is_heavy_task", "time_limit", "priority", "rate_limit"}
)
"""Celery task options with a Baton meaning (see :meth:`Task.baton_options`)."""

_BATON_ONLY = frozenset({"heavy", "throttle", "max_polls", "description"})
"""Baton options a Celery-style task may also declare."""


def _class_name(cls: type) -> str:
    module = cls.__module__
    if module == "__main__":
        from .app import _main_module_name

        module = _main_module_name()
    return f"{module}.{cls.__name__}"


def _register(task: "Task", origin: str) -> None:
    existing = _registry.get(task.name)
    if existing is not None and getattr(existing, "_origin", origin) != origin:
        raise ValueError(f"task name {task.name!r} is already registered by {getattr(existing, '_origin', '?')}")
    setattr(task, "_origin", origin)
    _registry[task.name] = task


def _note_unsupported(options: Iterable[str], where: str) -> None:
    for key in options:
        note = _TASK_OPTION_NOTES.get(key)
        if note is not None:
            _warn_once(f"task:{key}", f"{where}: Celery option {key}= is accepted but not honoured: {note}")


class Task(_BatonTask):
    """Celery's ``Task``: subclass it with a ``run`` method, or let ``shared_task`` make one.

    Class attributes are Celery's options (``max_retries=3``,
    ``default_retry_delay=180``, ``autoretry_for``, ``retry_backoff``,
    ``queue``, ``is_heavy_task``...); :meth:`baton_options` says what each
    becomes for the broker. A subclass is registered when it is defined,
    under ``name`` or ``module.ClassName``, unless its body sets
    ``abstract = True``.
    """

    name: str = ""
    abstract: ClassVar[bool] = True
    max_retries: ClassVar[Optional[int]] = 3
    default_retry_delay: ClassVar[float] = 180
    autoretry_for: ClassVar[Tuple[Type[BaseException], ...]] = ()
    retry_kwargs: ClassVar[Mapping[str, Any]] = {}
    retry_backoff: ClassVar[Union[bool, float]] = False
    retry_backoff_max: ClassVar[float] = 600
    retry_jitter: ClassVar[bool] = True
    queue: ClassVar[Optional[str]] = None
    ignore_result: ClassVar[bool] = False
    is_heavy_task: ClassVar[bool] = False
    time_limit: ClassVar[Optional[float]] = None
    priority: ClassVar[Optional[int]] = None
    rate_limit: ClassVar[Optional[str]] = None
    """Celery's ``"10/s"``, ``"100/m"``: Baton's rate, which counts the starts of
    every worker together where Celery counted each worker apart."""
    throttle: ClassVar[Optional[Throttle]] = None
    baton: ClassVar[Mapping[str, Any]] = {}
    """Further Baton options (``max_polls``, ``description``) for this task."""
    _app: ClassVar[Optional[Baton]] = None
    _decorated: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__
        _note_unsupported([k for k in own if k in _TASK_OPTION_NOTES], cls.__name__)
        if own.get("_decorated") or own.get("abstract"):
            return
        if "abstract" not in own:
            cls.abstract = False
        if not own.get("name"):
            cls.name = _class_name(cls)
        _register(cls(), _class_name(cls))

    def __init__(self) -> None:
        cls = type(self)
        if not cls.name:
            raise TypeError(f"{cls.__name__} has no task name: subclass Task with a run() method")
        super().__init__(cls._app or _current.app, self._run_in_worker, cls.name, self.baton_options())
        self.__doc__ = cls.__doc__
        self.__name__ = cls.__name__
        self.__qualname__ = cls.__qualname__
        self.__module__ = cls.__module__
        self.__wrapped__ = getattr(cls, "run")

    # The app: a task made by shared_task or a Task subclass follows current_app.
    @property
    def app(self) -> Baton:
        return type(self)._app or _current.app

    @app.setter
    def app(self, value: Baton) -> None:
        pass  # Baton's Task.__init__ sets it; the class decides (above)

    def __repr__(self) -> str:
        return f"<@task: {self.name}>"

    @classmethod
    def baton_options(cls) -> Dict[str, Any]:
        """What this task's Celery options mean to the broker (Baton's option names).

        * ``queue`` / ``is_heavy_task`` route it; ``throttle`` (or
          ``@throttle``) declares its throttle; ``time_limit`` and
          ``priority`` keep their meaning.
        * ``max_polls`` is unbounded: ``self.retry`` checks Celery's
          ``max_retries`` itself (see the module documentation).
        * Without ``autoretry_for`` a failure is never retried
          (``max_retries`` 0 for the broker). With it, the broker retries
          those exceptions ``max_retries`` times, after ``retry_backoff``
          seconds (``True`` = 1) doubling up to ``retry_backoff_max``, or a
          constant ``default_retry_delay`` (or ``retry_kwargs['countdown']``).
        """
        opts: Dict[str, Any] = {"max_polls": UNBOUNDED}
        if cls.queue:
            opts["queue"] = cls.queue
        if cls.is_heavy_task:
            opts["heavy"] = True
        if cls.throttle is not None:
            opts["throttle"] = cls.throttle
        if cls.time_limit is not None:
            opts["time_limit"] = cls.time_limit
        if cls.priority is not None:
            opts["priority"] = cls.priority
        if cls.rate_limit:
            _warn_once(
                "rate_limit",
                f"{cls.name}: rate_limit={cls.rate_limit!r} is enforced by the broker across every worker "
                "together; Celery enforced it in each worker apart",
            )
            opts["rate"] = cls.rate_limit
        if cls.autoretry_for:
            limit = cls._retry_limit()
            opts["max_retries"] = UNBOUNDED if limit is None else limit
            if cls.retry_backoff:
                opts["retry_backoff"] = 1 if cls.retry_backoff is True else cls.retry_backoff
                opts["retry_backoff_max"] = cls.retry_backoff_max
            else:
                delay = cls.retry_kwargs.get("countdown", cls.default_retry_delay)
                opts["retry_backoff"] = opts["retry_backoff_max"] = delay
        else:
            opts["max_retries"] = 0
        opts.update(cls.baton)
        return opts

    @classmethod
    def _retry_limit(cls) -> Optional[int]:
        limit = cls.retry_kwargs.get("max_retries", cls.max_retries)
        return None if limit is None else int(limit)

    # -- running ---------------------------------------------------------------------

    def run(self, *args: Any, **kwargs: Any) -> Any:
        """The task body: override it (or let ``shared_task`` supply it)."""
        raise NotImplementedError(f"{type(self).__name__} should implement run()")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the body here and now, as Celery does (``self.request.called_directly``)."""
        token = _request.set(Request(args=args, kwargs=kwargs))
        try:
            return self.run(*args, **kwargs)
        finally:
            _request.reset(token)

    @property
    def request(self) -> Request:
        """The current run's :class:`Request` (a blank one outside a worker)."""
        try:
            return _request.get()
        except LookupError:
            return Request()

    def _run_in_worker(self, *args: Any, **kwargs: Any) -> Any:
        """What the worker calls: Celery's call shape and failure rules around ``run``."""
        run = _current_run()
        call_args = list(args)
        if (
            run.phase == "on_failure"
            and run.step_index == 0
            and run.context.get(ERRBACK_CONTEXT_KEY) == ERRBACK_TASK_ID
            and call_args
            and isinstance(call_args[0], dict)
        ):
            record = call_args[0]
            _remember_failure(record)
            call_args[0] = str(record.get("task_id", ""))
        request = Request(run.task_id, run.polls + run.retries, call_args, kwargs, called_directly=False, run=run)
        body = self if type(self)._decorated else copy.copy(self)
        token = _request.set(request)
        try:
            return body.run(*call_args, **kwargs)
        except (Retry, Fatal, Cancelled):
            raise
        except Exception as exc:
            if is_final(exc):
                raise
            cls = type(self)
            if cls.autoretry_for and isinstance(exc, tuple(cls.autoretry_for)):
                limit = cls._retry_limit()
                if limit is not None and request.retries >= limit:
                    mark_final(exc)
                raise
            mark_final(exc)
            raise
        finally:
            _request.reset(token)

    def retry(
        self,
        args: Optional[Sequence[Any]] = None,
        kwargs: Optional[Mapping[str, Any]] = None,
        exc: Optional[BaseException] = None,
        throw: bool = True,
        eta: Optional[datetime] = None,
        countdown: Optional[float] = None,
        max_retries: Optional[int] = None,
        **options: Any,
    ) -> Retry:
        """Run this step again later (Baton's retry-later), within Celery's budget.

        Raises :class:`~baton.Retry` (``countdown`` seconds, else until
        ``eta``, else ``default_retry_delay``). Once ``request.retries``
        reached ``max_retries`` (this call's, else the task's; ``None`` =
        unbounded) it raises ``exc`` instead, or
        :class:`MaxRetriesExceededError`, and the step fails for good.

        Baton reruns the step with its own arguments, so new ``args`` /
        ``kwargs`` are refused rather than dropped.
        """
        request = self.request
        if args is not None or kwargs is not None:
            raise NotImplementedError(
                "self.retry(args=..., kwargs=...): Baton runs a retried step again with its own arguments"
            )
        if options:
            _warn_once("retry:options", f"self.retry({', '.join(sorted(options))}=...) is ignored: a retried "
                                        f"step keeps its queue and options")
        if request.called_directly:
            if exc is not None:
                raise exc
            raise Retry(after=0, message="Task can be retried")
        limit = type(self)._retry_limit() if max_retries is None else max_retries
        if limit is not None and request.retries >= limit:
            if exc is not None:
                raise mark_final(exc)
            raise mark_final(MaxRetriesExceededError(
                f"Can't retry {self.name}[{request.id}] args:{request.args} kwargs:{request.kwargs}"
            ))
        if countdown is None and eta is not None:
            countdown = (eta - datetime.now(eta.tzinfo)).total_seconds()
        delay = max(0.0, float(type(self).default_retry_delay if countdown is None else countdown))
        message = f"{type(exc).__name__}: {exc}" if exc is not None else f"Retry in {delay:g}s"
        retry = Retry(after=delay, message=message)
        if throw:
            raise retry
        return retry

    def AsyncResult(self, task_id: str) -> "_Result":  # noqa: N802 - Celery's name
        """``self.AsyncResult(id)``: see :class:`AsyncResult`."""
        return AsyncResult(task_id, app=self.app)

    # -- signatures ------------------------------------------------------------------

    def s(self, *args: Any, **kwargs: Any) -> "Signature":
        return Signature(self.name, args, kwargs, immutable=False, app=self.app, task=self)

    def si(self, *args: Any, **kwargs: Any) -> "Signature":
        return Signature(self.name, args, kwargs, immutable=True, app=self.app, task=self)

    def signature(
        self,
        args: Optional[Iterable[Any]] = None,
        kwargs: Optional[Mapping[str, Any]] = None,
        immutable: bool = False,
        **options: Any,
    ) -> "Signature":
        sig = Signature(self.name, args or (), kwargs, immutable=immutable, app=self.app, task=self)
        return sig.set(**options) if options else sig

    subtask = signature

    def delay(self, *args: Any, **kwargs: Any) -> "_Result":  # type: ignore[override]
        return self.apply_async(args, kwargs)

    def apply_async(  # type: ignore[override]
        self,
        args: Optional[Iterable[Any]] = None,
        kwargs: Optional[Mapping[str, Any]] = None,
        **options: Any,
    ) -> "_Result":
        """Celery's ``apply_async``: see :meth:`Signature.apply_async` for the options."""
        return self.si(*(args or ()), **(kwargs or {})).apply_async(**options)


def _task_decorator(args: Tuple[Any, ...], options: Dict[str, Any], app: Optional[Baton]) -> Any:
    if len(args) == 1 and callable(args[0]) and not options:
        return _make_task(args[0], app, {})
    if args:
        raise TypeError("shared_task takes the function, or only keyword options")

    def decorate(fn: Callable[..., Any]) -> Task:
        return _make_task(fn, app, dict(options))

    return decorate


def _make_task(fn: Callable[..., Any], app: Optional[Baton], options: Dict[str, Any]) -> Task:
    """Celery's way: a Task subclass per function, with the options as class attributes."""
    if isinstance(fn, Task):
        raise TypeError(f"{fn.name} is already a task")
    if inspect.iscoroutinefunction(fn):
        raise TypeError(f"{fn.__name__}: Celery tasks are plain functions; for async def use baton's @app.task")
    name = options.pop("name", None) or default_name(fn)
    bind = bool(options.pop("bind", False))
    base = options.pop("base", None) or Task
    if not (isinstance(base, type) and issubclass(base, Task)):
        raise TypeError(f"base= must be a subclass of baton.celery.Task (got {base!r})")
    where = f"@shared_task on {fn.__name__!r}"
    attrs: Dict[str, Any] = {
        "name": name,
        "run": fn if bind else staticmethod(fn),
        "__module__": fn.__module__,
        "__doc__": fn.__doc__,
        "_decorated": True,
        "_app": app,
        "abstract": False,
    }
    baton: Dict[str, Any] = dict(base.baton)
    for key, value in options.items():
        if key in _TASK_ATTRIBUTES:
            if key == "autoretry_for":
                value = tuple(value)
            attrs[key] = value
        elif key == "throttle":
            attrs["throttle"] = _as_throttle(value)
        elif key == "heavy":
            attrs["is_heavy_task"] = bool(value)
        elif key in _BATON_ONLY:
            baton[key] = value
        elif key in _TASK_OPTION_NOTES:
            attrs[key] = value
            _note_unsupported([key], where)
        else:
            attrs[key] = value
            _warn_once(f"task-attr:{key}", f"{where}: {key}= is not a Celery option Baton knows; it is kept as "
                                           f"an attribute of the task, and the broker does not read it")
    attrs["baton"] = baton
    declared = declared_on(fn)
    if declared is not None and "throttle" not in attrs:
        attrs["throttle"] = declared
    cls = type(fn.__name__, (base,), attrs)
    task = cls()
    _register(task, default_name(fn))
    return cast(Task, task)


def _as_throttle(value: Any) -> Optional[Throttle]:
    from .options import as_throttle

    return as_throttle(value)


@overload
def shared_task(fn: Callable[..., Any], /) -> Task: ...


@overload
def shared_task(**options: Any) -> Callable[[Callable[..., Any]], Task]: ...


def shared_task(*args: Any, **options: Any) -> Any:
    """Celery's ``@shared_task`` / ``@shared_task(name=..., bind=True, is_heavy_task=True, ...)``.

    Options with a Baton meaning: ``name``, ``bind``, ``base``,
    ``max_retries``, ``default_retry_delay``, ``autoretry_for``,
    ``retry_kwargs``, ``retry_backoff``, ``retry_backoff_max``, ``queue``,
    ``is_heavy_task`` (the heavy queue), ``time_limit``, ``priority``,
    ``ignore_result`` (results stay in the broker for the chain's retention;
    nothing to run). Baton's own ``throttle``, ``heavy``, ``max_polls`` and
    ``description`` are taken too; ``@throttle`` under it declares the
    throttle. Others are accepted with a :class:`CeleryCompatWarning`.
    """
    return _task_decorator(args, options, None)


# -- signatures and chains ---------------------------------------------------------------


def _step_options(options: Mapping[str, Any], where: str) -> Dict[str, Any]:
    """Celery step options to Baton's: the shared names pass, the rest warn."""
    out: Dict[str, Any] = {}
    for key, value in options.items():
        if key in OPTION_NAMES and key != "max_retries":
            out[key] = value
        elif key in _APPLY_OPTION_NOTES:
            _warn_once(f"apply:{key}", f"{where}: {key}= is not honoured by Baton: {_APPLY_OPTION_NOTES[key]}")
        elif key == "ignore_result":
            pass  # results stay in the broker for the chain's retention; nothing to switch off
        else:
            raise TypeError(f"{where}: unknown option {key}=")
    return out


def _callbacks(value: Any, what: str) -> List[_BatonSignature]:
    """``link``/``link_error`` values as steps: a signature, a chain or a list.

    Baton runs callback steps one after another and hands the chain's
    result (or failure) to the first only, where Celery calls each link with
    it; so only the first may be mutable, and a later mutable one is refused
    rather than given something else.
    """
    if value is None:
        return []
    if isinstance(value, _BatonChain):
        steps = list(value.steps)
    elif isinstance(value, _BatonSignature):
        steps = [value]
    elif isinstance(value, (list, tuple)):
        steps = []
        for item in value:
            steps += _callbacks(item, what)
    else:
        raise TypeError(f"{what} takes signatures or a chain, not {type(value).__name__}")
    for step in steps[1:]:
        if not step.immutable and isinstance(value, (list, tuple)):
            raise NotImplementedError(
                f"{what}: several callbacks run one after another in Baton and only the first receives the "
                f"result; make {step.name} immutable (.si) or pass one callback"
            )
    return steps


def _nested_errbacks(steps: Sequence[_BatonSignature]) -> bool:
    """Whether a nested executor among ``steps`` (or in their groups) has a mutable
    first errback, which Celery calls with the failed task's id."""
    for step in steps:
        if isinstance(step, _BatonNested):
            if step.on_failure and not step.on_failure[0].immutable:
                return True
            if _nested_errbacks(step.steps):
                return True
        elif isinstance(step, _BatonGroup) and _nested_errbacks(step.members):
            return True
    return False


def _no_step_callbacks(steps: Sequence[_BatonSignature]) -> None:
    for step in steps:
        if isinstance(step, Signature) and (step._link or step._link_error):
            raise NotImplementedError(
                f"{step.name}: a link/link_error on one step of a chain is not supported by Baton, whose "
                f"callbacks belong to the whole chain; pass them to the chain's apply_async"
            )


def _submit(
    steps: Sequence[_BatonSignature],
    args: Optional[Iterable[Any]],
    kwargs: Optional[Mapping[str, Any]],
    link: Any,
    link_error: Any,
    options: Dict[str, Any],
    where: str,
) -> "AsyncResult":
    steps = list(steps)
    if args or kwargs:
        first = steps[0]
        steps[0] = first._copy(args=tuple(args or ()) + first.args, kwargs={**first.kwargs, **(kwargs or {})})
    chain_level = {k: options.pop(k) for k in list(options) if k in _CHAIN_LEVEL}
    per_step = _step_options(options, where)
    if per_step:
        steps = [s._copy(options={**s.options, **per_step}) for s in steps]
    if link is not None and chain_level.get("on_success") is not None:
        raise TypeError(f"{where}: give link= or on_success=, not both")
    if link_error is not None and chain_level.get("on_failure") is not None:
        raise TypeError(f"{where}: give link_error= or on_failure=, not both")
    success = _callbacks(link, "link")
    failure = _callbacks(link_error, "link_error")
    if success:
        chain_level["on_success"] = success
    if failure:
        chain_level["on_failure"] = failure
    if (failure and not failure[0].immutable) or _nested_errbacks(steps):
        # Child chains take their parent's context: one key serves them all.
        context = dict(chain_level.get("context") or {})
        context[ERRBACK_CONTEXT_KEY] = ERRBACK_TASK_ID
        chain_level["context"] = context
    app = chain_level.pop("app", None)
    result = _BatonChain(steps).apply_async(app=app, **chain_level)
    return AsyncResult(result.id, app=result.app, _result=result)


class Signature(_BatonSignature):
    """Celery's ``signature``: ``.s``/``.si``, ``.set(...)``, ``.delay``, ``.apply_async``, ``|``.

    As in Celery, :meth:`set` changes this signature and returns it, partial
    arguments given to ``delay``/``apply_async``/``clone`` go *before* the
    signature's own, and ``link``/``link_error``/``on_error`` attach
    callbacks used when it is submitted alone.
    """

    __slots__ = ("_link", "_link_error")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._link: List[_BatonSignature] = []
        self._link_error: List[_BatonSignature] = []

    def _copy(
        self,
        args: Optional[Iterable[Any]] = None,
        kwargs: Optional[Mapping[str, Any]] = None,
        options: Optional[Mapping[str, Any]] = None,
    ) -> "Signature":
        sig = Signature(
            self.name,
            self.args if args is None else args,
            self.kwargs if kwargs is None else kwargs,
            immutable=self.immutable,
            options=self.options if options is None else options,
            app=self.app,
            task=self.task,
        )
        sig._link = list(self._link)
        sig._link_error = list(self._link_error)
        return sig

    def set(self, immutable: Optional[bool] = None, **options: Any) -> "Signature":
        """Add options (``countdown``, ``queue``, ``eta``, ``priority``, Baton's
        ``throttle``...) to this signature and return it (Celery's ``set``)."""
        if immutable is not None:
            self.immutable = bool(immutable)
        link = options.pop("link", None)
        link_error = options.pop("link_error", None)
        if link is not None:
            self._link += _callbacks(link, "link")
        if link_error is not None:
            self._link_error += _callbacks(link_error, "link_error")
        self.options = {**self.options, **_step_options(options, f"{self.name}.set()")}
        return self

    def clone(
        self, args: Optional[Iterable[Any]] = None, kwargs: Optional[Mapping[str, Any]] = None, **options: Any
    ) -> "Signature":
        """A copy with ``args`` put before its own (Celery's partials) and ``kwargs`` merged."""
        sig = self._copy(args=tuple(args or ()) + self.args, kwargs={**self.kwargs, **(kwargs or {})})
        return sig.set(**options) if options else sig

    def link(self, callback: Any) -> Any:
        """Run ``callback`` after this signature succeeds (when submitted alone)."""
        self._link += _callbacks(callback, "link")
        return callback

    def link_error(self, errback: Any) -> Any:
        """Run ``errback`` if this signature fails (when submitted alone)."""
        self._link_error += _callbacks(errback, "link_error")
        return errback

    def on_error(self, errback: Any) -> "Signature":
        self.link_error(errback)
        return self

    def __or__(self, other: Any) -> "Chain":
        return chain(self, other)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Calling a signature runs its task here (Celery's ``sig()``)."""
        if self.task is None:
            raise TypeError(f"{self.name} is not a task of this process")
        return self.task(*(args + self.args), **{**self.kwargs, **kwargs})

    def delay(self, *args: Any, **kwargs: Any) -> "AsyncResult":  # type: ignore[override]
        return self.apply_async(args, kwargs)

    def apply_async(  # type: ignore[override]
        self,
        args: Optional[Iterable[Any]] = None,
        kwargs: Optional[Mapping[str, Any]] = None,
        link: Any = None,
        link_error: Any = None,
        **options: Any,
    ) -> "AsyncResult":
        """Submit this signature as a one-step chain.

        ``args`` go before the signature's own. ``link`` / ``link_error``
        (with those attached by :meth:`link` / :meth:`on_error`) become
        on_success / on_failure. Options: ``countdown``, ``eta``, ``queue``,
        ``priority``, ``time_limit``, and Baton's (``heavy``, ``context``,
        ``deadline``, ``idempotency_key``, ``unique_key``, ``throttle``...).
        Celery's ``expires``, ``task_id``, ``routing_key``... are accepted
        with a warning.
        """
        links = self._link + _callbacks(link, "link")
        errbacks = self._link_error + _callbacks(link_error, "link_error")
        plain = self._copy()
        plain._link, plain._link_error = [], []
        return _submit([plain], args, kwargs, links or None, errbacks or None, dict(options),
                       f"{self.name}.apply_async()")

    def apply(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(
            "eager apply() is not supported: call the task (task(...)) to run it here, or "
            "apply_async(...).get() to run it on a worker"
        )


class Chain(_BatonChain):
    """Celery's ``chain``: called (``chain(...)()``), ``delay()``ed or ``apply_async``'ed with
    ``link``/``link_error``, which Baton runs once after the whole chain."""

    __slots__ = ("_link", "_link_error")

    def __init__(self, steps: Sequence[_BatonSignature]) -> None:
        super().__init__(steps)
        self._link: List[_BatonSignature] = []
        self._link_error: List[_BatonSignature] = []

    def __call__(self, *args: Any, **kwargs: Any) -> "AsyncResult":  # type: ignore[override]
        return self.apply_async(args, kwargs)

    def delay(self, *args: Any, **kwargs: Any) -> "AsyncResult":  # type: ignore[override]
        return self.apply_async(args, kwargs)

    def __or__(self, other: Any) -> "Chain":
        return chain(self, other)

    def link(self, callback: Any) -> Any:
        self._link += _callbacks(callback, "link")
        return callback

    def link_error(self, errback: Any) -> Any:
        self._link_error += _callbacks(errback, "link_error")
        return errback

    def on_error(self, errback: Any) -> "Chain":
        self.link_error(errback)
        return self

    def apply_async(  # type: ignore[override]
        self,
        args: Optional[Iterable[Any]] = None,
        kwargs: Optional[Mapping[str, Any]] = None,
        link: Any = None,
        link_error: Any = None,
        **options: Any,
    ) -> "AsyncResult":
        """Submit the chain; ``args`` go before the first step's own.

        ``link`` runs after the last step, ``link_error`` once if a step
        failed for good (each at most once, guaranteed by the broker). As
        in Celery, ``countdown``/``eta`` delay the first step; unlike Celery,
        ``queue=`` (and ``heavy=True``) route *every* step, not only the first.
        """
        _no_step_callbacks(self.steps)
        links = self._link + _callbacks(link, "link")
        errbacks = self._link_error + _callbacks(link_error, "link_error")
        return _submit(self.steps, args, kwargs, links or None, errbacks or None, dict(options),
                       "chain.apply_async()")

    def apply(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(
            "eager apply() is not supported: use apply_async(...).get() to run the chain on workers"
        )


def chain(*tasks: Any, **options: Any) -> Chain:
    """Celery's ``chain(a.si(x), b.s())``: steps run in order, each after the previous succeeded."""
    if options:
        raise TypeError(f"chain() options ({', '.join(sorted(options))}) go to apply_async()")
    if len(tasks) == 1 and isinstance(tasks[0], (list, tuple)):
        tasks = tuple(tasks[0])
    steps: List[_BatonSignature] = []
    for item in tasks:
        if isinstance(item, Chain) and (item._link or item._link_error):
            # A chain with its own callbacks inside another: a nested executor.
            steps.append(_nested(list(item.steps), on_success=item._link, on_failure=item._link_error))
            continue
        if isinstance(item, _BatonChain):
            steps.extend(item.steps)
        elif isinstance(item, _BatonSignature):
            steps.append(item)
        else:
            raise TypeError(f"chain() takes signatures (task.s()/task.si()), not {type(item).__name__}")
    return Chain(steps)


def signature(
    varies: Union[str, Task, _BatonSignature],
    args: Iterable[Any] = (),
    kwargs: Optional[Mapping[str, Any]] = None,
    **options: Any,
) -> Signature:
    """Celery's ``signature(name_or_task, args, kwargs, **options)``."""
    if isinstance(varies, Signature):
        return varies
    if isinstance(varies, Task):
        return varies.signature(args, kwargs, **options)
    if isinstance(varies, _BatonSignature):
        return Signature(varies.name, varies.args, varies.kwargs, immutable=varies.immutable,
                         options=varies.options, app=varies.app, task=varies.task)
    immutable = bool(options.pop("immutable", False))
    return get_current_app().signature(str(varies), args, kwargs, immutable=immutable, **options)


class group(_BatonGroup):
    """Celery's ``group(a.s(1), b.s(2))`` (or ``group([...])``): the members run side by side.

    Submitted alone (``group(...)()``, ``.delay()``, ``.apply_async()``) its
    result is the list of the members' results, in order. As a step of a
    chain, the next step receives that list (Celery's chord). The first
    member that fails fails the group, and the broker cancels the others.
    Partial arguments go before each member's own, as in Celery.
    """

    __slots__ = ()

    def __init__(self, *tasks: Any, **options: Any) -> None:
        if options:
            raise TypeError(f"group() options ({', '.join(sorted(options))}) go to apply_async()")
        members = tuple(tasks[0]) if len(tasks) == 1 and not isinstance(tasks[0], _BatonSignature) else tasks
        super().__init__(members)

    def _copy(
        self,
        args: Optional[Iterable[Any]] = None,
        kwargs: Optional[Mapping[str, Any]] = None,
        options: Optional[Mapping[str, Any]] = None,
    ) -> "group":
        copied = super()._copy(args, kwargs, options)
        assert isinstance(copied, _BatonGroup)
        return group(*copied.members)

    def __or__(self, other: Any) -> "Chain":
        return chain(self, other)

    def __call__(self, *args: Any, **kwargs: Any) -> "AsyncResult":
        return self.apply_async(args, kwargs)

    def delay(self, *args: Any, **kwargs: Any) -> "AsyncResult":  # type: ignore[override]
        return self.apply_async(args, kwargs)

    def apply_async(  # type: ignore[override]
        self,
        args: Optional[Iterable[Any]] = None,
        kwargs: Optional[Mapping[str, Any]] = None,
        link: Any = None,
        link_error: Any = None,
        **options: Any,
    ) -> "AsyncResult":
        """Submit the group as a one-step chain; ``args`` go before each member's own."""
        return _submit([self], args, kwargs, link, link_error, dict(options), "group.apply_async()")


class chord(Chain):
    """Celery's ``chord(header, body)``: the header's members side by side, then ``body``
    with their results as a list. ``chord(header)(body)`` submits at once, as in Celery."""

    __slots__ = ("header",)

    def __init__(self, header: Any, body: Any = None, **options: Any) -> None:
        if options:
            raise TypeError(f"chord() options ({', '.join(sorted(options))}) go to apply_async()")
        self.header = header if isinstance(header, _BatonGroup) else group(header)
        super().__init__([self.header] if body is None else [self.header, body])

    def __call__(self, body: Any = None, **options: Any) -> "AsyncResult":  # type: ignore[override]
        if body is None:
            return self.apply_async(**options)
        return chain(self.header, body).apply_async(**options)


# -- throttle ------------------------------------------------------------------------------


@overload
def throttle(fn: F, /) -> F: ...


@overload
def throttle(key: str = "*", /, **options: Any) -> Throttle: ...


def throttle(*args: Any, **options: Any) -> Any:
    """Baton's :func:`baton.throttle` with NodeConductor's call shapes.

    ``with throttle(concurrency=1, key=k):`` asks the broker for a slot of
    (task name, ``k``) and waits for it; a bare ``@throttle`` (under
    ``@shared_task``) declares concurrency 1 for the whole task, which the
    broker enforces before dispatching. The key may come first
    (``throttle('tenant-7')``), and ``'*'`` (NodeConductor's default) means
    the whole task name. NodeConductor's ``retry_delay`` and ``timeout``
    are accepted with a warning: nobody polls (waiters queue in the broker,
    first come first served) and a slot is freed when its holder's run ends
    or its lease lapses.
    """
    if len(args) == 1 and callable(args[0]) and not isinstance(args[0], str) and not options:
        return _baton_throttle(args[0])
    if len(args) > 1:
        raise TypeError("throttle() takes at most one positional argument, the key")
    key = args[0] if args else options.pop("key", "")
    for old in ("retry_delay", "timeout"):
        if options.pop(old, None) is not None:
            _warn_once(f"throttle:{old}", f"throttle({old}=...) is ignored: a waiting task waits in the broker's "
                                          f"line without polling, and a slot is freed when its run ends or its "
                                          f"lease lapses")
    return _baton_throttle(key="" if key in ("*", None) else str(key), **options)


# -- results -------------------------------------------------------------------------------


def _find_step(chain: pb.Chain, task_id: str) -> Optional[pb.Step]:
    for step in list(chain.steps) + list(chain.on_success) + list(chain.on_failure):
        if step.task_id == task_id:
            return step
    return None


_STEP_STATES = {
    pb.STEP_STATE_SUCCEEDED: states.SUCCESS,
    pb.STEP_STATE_FAILED: states.FAILURE,
    pb.STEP_STATE_CANCELLED: states.REVOKED,
    pb.STEP_STATE_RUNNING: states.STARTED,
}


class AsyncResult:
    """Celery's ``AsyncResult(id)``: ``.state``, ``.result``, ``.traceback``, ``.get()``.

    ``id`` is what ``delay()``/``apply_async()`` returned (a chain id), or a
    task id: the failed task's id an errback receives (read from the failure
    record that came with it), or a step of the chain the caller runs in.
    An id the broker does not know is PENDING, as in Celery. There is no
    result backend: everything is read from the broker when asked.
    """

    def __init__(self, id: str, app: Optional[Baton] = None, *, _result: Optional[_BatonResult] = None) -> None:  # noqa: A002
        self.id = id
        self._app = app
        self._result = _result

    def __repr__(self) -> str:
        return f"<AsyncResult: {self.id}>"

    def __str__(self) -> str:
        return self.id

    def __eq__(self, other: object) -> bool:
        if isinstance(other, AsyncResult):
            return other.id == self.id
        if isinstance(other, str):
            return other == self.id
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def task_id(self) -> str:
        return self.id

    @property
    def app(self) -> Baton:
        return self._app or _current.app

    @property
    def baton(self) -> _BatonResult:
        """The chain's Baton handle (:class:`baton.AsyncResult`): ``info()`` shows
        every step with its attempts, polls, retries, worker and times."""
        if self._result is None:
            self._result = _BatonResult(self.app, self.id)
        return self._result

    def _handle(self) -> _BatonResult:
        return self.baton

    def _snapshot(self) -> Tuple[str, Any, Optional[Dict[str, Any]]]:
        """(state, result, failure record) as the broker has them now."""
        record = _known_failure(self.id)
        if record is not None:
            return states.FAILURE, None, record
        try:
            chain = self._handle().info()
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            if code not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                raise
            return self._step_snapshot()
        state = _CHAIN_STATES.get(STATES.get(chain.state, ""), states.PENDING)
        if state == states.SUCCESS:
            return state, _json.loads(chain.result) if chain.result else None, None
        if state == states.FAILURE:
            return state, None, failure_record(chain.failure)
        return state, None, None

    def _step_snapshot(self) -> Tuple[str, Any, Optional[Dict[str, Any]]]:
        """A task id: look for it in the chain of the run asking (no lookup by task id exists)."""
        try:
            run = _current_run()
        except RuntimeError:
            return states.PENDING, None, None
        chain = self.app.client.get_chain(run.chain_id)
        step = _find_step(chain, self.id)
        if step is None:
            return states.PENDING, None, None
        state = _STEP_STATES.get(step.state, states.PENDING)
        if state == states.PENDING and (step.polls or step.retries):
            state = states.RETRY
        if state == states.SUCCESS:
            text = self.app.client.step_result(run.chain_id, step.task_id) if step.result_omitted else step.result
            return state, _json.loads(text) if text else None, None
        if state == states.FAILURE:
            return state, None, failure_record(step.failure)
        return state, None, None

    @property
    def state(self) -> str:
        """PENDING (waiting, running or unknown), SUCCESS, FAILURE or REVOKED
        (cancelled); STARTED and RETRY for a step of the caller's own chain."""
        return self._snapshot()[0]

    status = state

    @property
    def result(self) -> Any:
        """The result once SUCCESS; the exception (rebuilt, see
        :func:`rebuild_exception`) once FAILURE; else ``None``."""
        state, value, record = self._snapshot()
        if record is not None:
            return rebuild_exception(record)
        return value if state == states.SUCCESS else None

    info = result

    @property
    def traceback(self) -> Optional[str]:
        """The failed task's formatted traceback (the worker's), once FAILURE."""
        record = self._snapshot()[2]
        return None if record is None else str(record.get("traceback", ""))

    def ready(self) -> bool:
        return self.state in states.READY_STATES

    def successful(self) -> bool:
        return self.state == states.SUCCESS

    def failed(self) -> bool:
        return self.state == states.FAILURE

    def get(self, timeout: Optional[float] = None, propagate: bool = True, **ignored: Any) -> Any:
        """Wait for the chain to end and return its result (the last step's).

        A failure raises the failed task's exception, rebuilt (or returns it
        with ``propagate=False``); a cancelled chain raises
        :class:`TaskRevokedError`. Waiting follows the broker's
        ``WatchChain`` stream: ``interval`` and the like are not needed.

        Raises:
            TimeoutError: not ended within ``timeout`` seconds.
        """
        record = _known_failure(self.id)
        if record is None:
            try:
                return self._handle().get(timeout)
            except ChainFailed as failed:
                record = failed.record
            except ChainCancelled as cancelled:
                if propagate:
                    raise TaskRevokedError(str(cancelled)) from None
                return TaskRevokedError(str(cancelled))
        exc = rebuild_exception(record)
        if propagate:
            raise exc
        return exc

    wait = get

    def revoke(self, terminate: bool = False, **ignored: Any) -> None:
        """Cancel the chain: unstarted steps never start, running ones are told
        to stop (``terminate`` is implied), and no callback runs."""
        self._handle().cancel("revoked")

    def forget(self) -> None:
        """Nothing to forget: the broker drops ended chains after its retention period."""


_Result = AsyncResult
"""The result class under a name that Celery's ``AsyncResult`` methods do not shadow."""
