"""Signatures and chains: the Celery canvas, reduced to what Baton runs.

A :class:`Signature` is a task name, JSON arguments and options;
``task.si(...)`` makes an immutable one, ``task.s(...)`` a mutable one that
the *broker* completes with the previous step's result (or, first in
on_failure, the failure record) as its first argument. A :class:`Chain` is an
ordered list of signatures, submitted with its on_success and on_failure
callbacks as one ``SubmitChain`` request. Building them is pure: nothing
talks to the broker until ``delay()`` / ``apply_async()``.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Optional, Sequence, Tuple, Union

from . import _json, options as _options, pb
from ._ids import new_chain_id
from ._trace import with_current_trace

if TYPE_CHECKING:
    from .app import Baton, Task
    from .client import AsyncResult

Callback = Union["Signature", "Chain", Sequence["Signature"], None]
Deadline = Union[datetime, timedelta, None]

_CHAIN_LEVEL = frozenset(
    {"on_success", "on_failure", "heavy", "context", "idempotency_key", "unique_key", "deadline"}
)


def _merge(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Merge option dicts left to right; a ``None`` value never overrides."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update({k: v for k, v in layer.items() if v is not None})
    return merged


class Signature:
    """One step: task name, arguments and options (Celery's ``signature``).

    Signatures are values: :meth:`set` and :meth:`clone` return new ones (Celery's
    ``set`` mutates; returning a copy keeps a signature shared between
    executors from being changed behind their back, and reads the same in
    ``x.si(...).set(countdown=30)``).
    """

    __slots__ = ("name", "args", "kwargs", "immutable", "options", "app", "task")

    def __init__(
        self,
        name: str,
        args: Iterable[Any] = (),
        kwargs: Optional[Mapping[str, Any]] = None,
        *,
        immutable: bool = False,
        options: Optional[Mapping[str, Any]] = None,
        app: Optional["Baton"] = None,
        task: Optional["Task"] = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError("a signature needs a task name")
        self.name = name
        self.args: Tuple[Any, ...] = tuple(args)
        self.kwargs: dict[str, Any] = dict(kwargs or {})
        self.immutable = immutable
        self.options: dict[str, Any] = _options.check(options or {}, f"signature {name}")
        self.app = app
        self.task = task
        """The local Task, if any: its declared options are sent as defaults."""

    def __repr__(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        kind = "si" if self.immutable else "s"
        opts = f".set({', '.join(f'{k}={v!r}' for k, v in self.options.items())})" if self.options else ""
        return f"{self.name}.{kind}({', '.join(parts)}){opts}"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Signature):
            return NotImplemented
        return self.to_pb() == other.to_pb()

    __hash__ = None  # type: ignore[assignment]

    def _copy(
        self,
        args: Optional[Iterable[Any]] = None,
        kwargs: Optional[Mapping[str, Any]] = None,
        options: Optional[Mapping[str, Any]] = None,
    ) -> "Signature":
        return Signature(
            self.name,
            self.args if args is None else args,
            self.kwargs if kwargs is None else kwargs,
            immutable=self.immutable,
            options=self.options if options is None else options,
            app=self.app,
            task=self.task,
        )

    def set(self, **options: Any) -> "Signature":
        """A copy with these options added (``countdown=30``, ``queue="heavy"``...)."""
        return self._copy(options=_merge(self.options, _options.check(options, f"{self.name}.set()")))

    def clone(self, args: Iterable[Any] = (), kwargs: Optional[Mapping[str, Any]] = None, **options: Any) -> "Signature":
        """A copy with ``args`` appended, ``kwargs`` and options merged (Celery's partials)."""
        return self._copy(
            args=self.args + tuple(args),
            kwargs={**self.kwargs, **(kwargs or {})},
            options=_merge(self.options, _options.check(options, f"{self.name}.clone()")),
        )

    def effective_options(self) -> dict[str, Any]:
        """The local task's declared options overlaid with this signature's."""
        declared = self.task.options if self.task is not None else {}
        return _merge(declared, self.options)

    def to_pb(self, extra: Optional[Mapping[str, Any]] = None) -> pb.Signature:
        """The protocol signature; ``extra`` options override (used for chain-level ones).

        A signature without options (the common ``task.delay(x)``) leaves the
        field unset, which the broker reads as empty options, and empty
        arguments skip the JSON encoder: a submission loop pays this per call.
        """
        options: Optional[pb.Options] = None
        if self.options or extra or (self.task is not None and self.task.options):
            options = _options.to_pb(_merge(self.effective_options(), extra or {}))
        return pb.Signature(
            name=self.name,
            args=_json.dumps(list(self.args), f"args of {self.name}") if self.args else "[]",
            kwargs=_json.dumps(self.kwargs, f"kwargs of {self.name}") if self.kwargs else "{}",
            immutable=self.immutable,
            options=options,
        )

    def __or__(self, other: Union["Signature", "Chain"]) -> "Chain":
        return chain(self, other)

    def delay(self, *args: Any, **kwargs: Any) -> "AsyncResult":
        """Submit this signature alone, with ``args``/``kwargs`` appended as partials."""
        return self.apply_async(args, kwargs)

    def apply_async(
        self,
        args: Optional[Iterable[Any]] = None,
        kwargs: Optional[Mapping[str, Any]] = None,
        **options: Any,
    ) -> "AsyncResult":
        """Submit this signature as a one-step chain.

        ``options`` mixes step options (``countdown``, ``queue``, ...) and the
        chain-level ones of :meth:`Chain.apply_async` (``on_success``,
        ``on_failure``, ``heavy``, ``context``, ``idempotency_key``,
        ``unique_key``, ``deadline``).
        """
        chain_level = {k: options.pop(k) for k in list(options) if k in _CHAIN_LEVEL}
        step = self.clone(args or (), kwargs, **options) if args or kwargs or options else self
        return Chain([step]).apply_async(**chain_level)


def _callback_steps(value: Callback, what: str) -> list[Signature]:
    if value is None:
        return []
    if isinstance(value, Signature):
        return [value]
    if isinstance(value, Chain):
        return list(value.steps)
    steps = list(value)
    for step in steps:
        if not isinstance(step, Signature):
            raise TypeError(f"{what} takes signatures or a chain, not {type(step).__name__}")
    return steps


def _deadline_ms(deadline: Deadline) -> int:
    if deadline is None:
        return 0
    if isinstance(deadline, timedelta):
        return int(round((time.time() + deadline.total_seconds()) * 1000))
    if isinstance(deadline, datetime):
        return int(round(deadline.timestamp() * 1000))
    raise TypeError(f"deadline must be a datetime or a timedelta, not {type(deadline).__name__}")


class Chain:
    """Signatures run one after another: step k+1 starts after step k succeeded.

    Calling the chain (``chain(a.si(x), b.si(x))()``, as the seed does),
    ``.delay()`` and ``.apply_async(...)`` all submit it and return an
    :class:`~baton.AsyncResult`.
    """

    __slots__ = ("steps",)

    def __init__(self, steps: Sequence[Signature]) -> None:
        if not steps:
            raise ValueError("a chain needs at least one step")
        self.steps: Tuple[Signature, ...] = tuple(steps)

    def as_step(self, *, on_success: Callback = None, on_failure: Callback = None, name: str = "executor") -> "Nested":
        """This chain, with its own callbacks, as one step of another chain (see :func:`nested`)."""
        return nested(self, on_success=on_success, on_failure=on_failure, name=name)

    def __repr__(self) -> str:
        return " | ".join(repr(s) for s in self.steps)

    def __or__(self, other: Union[Signature, "Chain"]) -> "Chain":
        return chain(self, other)

    def __call__(self) -> "AsyncResult":
        return self.apply_async()

    def delay(self) -> "AsyncResult":
        return self.apply_async()

    def to_request(
        self,
        *,
        on_success: Callback = None,
        on_failure: Callback = None,
        heavy: bool = False,
        context: Optional[Mapping[str, str]] = None,
        idempotency_key: Optional[str] = None,
        unique_key: Optional[str] = None,
        deadline: Deadline = None,
        queue: Optional[str] = None,
        countdown: Optional[float] = None,
        eta: Optional[datetime] = None,
    ) -> pb.SubmitChainRequest:
        """The ``SubmitChain`` request (pure; see :meth:`apply_async`)."""
        ctx = dict(context or {})
        for k, v in ctx.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise TypeError(f"context must map str to str (got {k!r}: {type(v).__name__})")
        with_current_trace(ctx)

        def convert(steps: Sequence[Signature], start: bool) -> list[pb.Signature]:
            out = []
            for i, step in enumerate(steps):
                extra: dict[str, Any] = {}
                if queue and not step.effective_options().get("queue"):
                    extra["queue"] = queue
                if start and i == 0:
                    if countdown is not None:
                        extra["countdown"] = countdown
                    if eta is not None:
                        extra["eta"] = eta
                out.append(step.to_pb(extra))
            return out

        # Only the fields that are set: each empty one passed to the
        # constructor still costs a submission loop its conversion.
        fields: dict[str, Any] = {"steps": convert(self.steps, True)}
        if on_success is not None:
            fields["on_success"] = convert(_callback_steps(on_success, "on_success"), False)
        if on_failure is not None:
            fields["on_failure"] = convert(_callback_steps(on_failure, "on_failure"), False)
        if heavy:
            fields["heavy"] = True
        if ctx:
            fields["context"] = ctx
        if idempotency_key:
            fields["idempotency_key"] = idempotency_key
        if unique_key:
            fields["unique_key"] = unique_key
        if deadline is not None:
            fields["deadline_unix_ms"] = _deadline_ms(deadline)
        return pb.SubmitChainRequest(**fields)

    def apply_async(
        self,
        *,
        on_success: Callback = None,
        on_failure: Callback = None,
        heavy: bool = False,
        context: Optional[Mapping[str, str]] = None,
        idempotency_key: Optional[str] = None,
        unique_key: Optional[str] = None,
        deadline: Deadline = None,
        queue: Optional[str] = None,
        countdown: Optional[float] = None,
        eta: Optional[datetime] = None,
        app: Optional["Baton"] = None,
    ) -> "AsyncResult":
        """Submit the chain; see :meth:`Baton.submit` for when it is stored.

        With the app's default pipelining this returns before the broker's
        acknowledgment: :meth:`AsyncResult.wait_stored` (or ``get()``) waits
        for it. With an ``idempotency_key`` or ``unique_key`` it returns once
        the chain is stored.

        * ``on_success`` runs after the last step succeeded; ``on_failure``
          once if a step failed for good, and a mutable (``.s``) first
          on_failure step receives the failure record dict first. Each takes a
          signature, a chain or a list of signatures.
        * ``heavy=True`` routes every step and callback to ``heavy`` (unless a
          signature names a queue); ``queue`` does the same for a named queue.
        * ``countdown`` / ``eta`` delay the first step.
        * ``context``: str-to-str map every step sees (``current_task().context``).
        * ``idempotency_key``: a repeat returns the first chain;
          ``unique_key``: skipped while an equal chain is queued or running.
        * ``deadline``: a ``datetime``, or a ``timedelta`` from now, after
          which the chain fails with ``DeadlineExceeded``.

        ``app`` picks the broker when no step belongs to a ``Baton`` app.
        """
        request = self.to_request(
            on_success=on_success,
            on_failure=on_failure,
            heavy=heavy,
            context=context,
            idempotency_key=idempotency_key,
            unique_key=unique_key,
            deadline=deadline,
            queue=queue,
            countdown=countdown,
            eta=eta,
        )
        target = app or next((s.app for s in self.steps if s.app is not None), None)
        if target is None:
            raise RuntimeError("no Baton app to submit to: build steps from app tasks or pass app=")
        request.chain_id = new_chain_id()  # a fresh request: Baton.submit need not copy it to add one
        return target.submit(request)


class Group(Signature):
    """Celery's ``group``: one step whose members run side by side, each as a chain of its own.

    The step succeeds once every member succeeded, and its result is the
    list of the members' results in member order, which the next step
    receives (a group followed by a step is Celery's ``chord``). The first
    member that fails for good fails the step with that member's failure
    record (which the chain's on_failure receives), and the broker cancels
    the others. A member is a signature, another group, or a nested
    executor (:func:`nested`). Like ``.s``, the group hands the previous
    step's result to the first step of each member (which takes it if it
    is mutable itself); ``immutable=True`` keeps it from them.

    Partial arguments (``group(...).delay(x)``) and options (``.set(...)``)
    go to every member, as each member's own :meth:`~Signature.clone` takes
    them.
    """

    __slots__ = ("members",)

    def __init__(self, members: Iterable[Signature], *, immutable: bool = False, name: str = "group") -> None:
        listed = tuple(members)
        for member in listed:
            if not isinstance(member, Signature):
                raise TypeError(f"group() takes signatures, not {type(member).__name__}")
        if not listed:
            raise ValueError("a group needs at least one member")
        app = next((m.app for m in listed if m.app is not None), None)
        super().__init__(name, immutable=immutable, app=app)
        self.members: Tuple[Signature, ...] = listed

    def __repr__(self) -> str:
        return f"group({', '.join(repr(m) for m in self.members)})"

    def clone(self, args: Iterable[Any] = (), kwargs: Optional[Mapping[str, Any]] = None, **options: Any) -> "Signature":
        """A copy whose members each take ``args``, ``kwargs`` and options as their ``clone`` does."""
        partial = tuple(args)
        return Group(
            [m.clone(partial, kwargs, **options) for m in self.members], immutable=self.immutable, name=self.name
        )

    def _copy(
        self,
        args: Optional[Iterable[Any]] = None,
        kwargs: Optional[Mapping[str, Any]] = None,
        options: Optional[Mapping[str, Any]] = None,
    ) -> "Signature":
        # Celery's partials: arguments given to the group go before each member's own.
        partial = tuple(args or ())
        members = [
            m._copy(
                args=partial + m.args if partial else None,
                kwargs={**m.kwargs, **kwargs} if kwargs else None,
                options={**m.options, **options} if options else None,
            )
            for m in self.members
        ]
        return Group(members, immutable=self.immutable, name=self.name)

    def effective_options(self) -> dict[str, Any]:
        return {}

    def to_pb(self, extra: Optional[Mapping[str, Any]] = None) -> pb.Signature:
        return pb.Signature(
            name=self.name, immutable=self.immutable, members=[m.to_pb(extra) for m in self.members]
        )


class Nested(Signature):
    """A chain with its own callbacks run as one step of another chain: a nested executor.

    The parent's step waits for it and succeeds with its result once it
    succeeded (after its on_success), or fails with its failure record once
    it failed (after its on_failure), which the parent's on_failure then
    receives. Cancelling the parent cancels it. Made by :func:`nested`.
    """

    __slots__ = ("steps", "on_success", "on_failure")

    def __init__(
        self,
        steps: Sequence[Signature],
        on_success: Sequence[Signature] = (),
        on_failure: Sequence[Signature] = (),
        *,
        name: str = "executor",
    ) -> None:
        if not steps:
            raise ValueError("a nested executor needs at least one step")
        app = next((s.app for s in steps if s.app is not None), None)
        super().__init__(name, app=app)
        self.steps: Tuple[Signature, ...] = tuple(steps)
        self.on_success: Tuple[Signature, ...] = tuple(on_success)
        self.on_failure: Tuple[Signature, ...] = tuple(on_failure)

    def __repr__(self) -> str:
        return f"nested({' | '.join(repr(s) for s in self.steps)})"

    def _copy(
        self,
        args: Optional[Iterable[Any]] = None,
        kwargs: Optional[Mapping[str, Any]] = None,
        options: Optional[Mapping[str, Any]] = None,
    ) -> "Signature":
        if args or kwargs or options:
            raise TypeError(f"{self.name}: a nested executor takes no arguments or options of its own")
        return self

    def effective_options(self) -> dict[str, Any]:
        return {}

    def to_pb(self, extra: Optional[Mapping[str, Any]] = None) -> pb.Signature:
        def convert(steps: Sequence[Signature]) -> list[pb.Signature]:
            return [s.to_pb() for s in steps]

        return pb.Signature(
            name=self.name,
            executor=pb.Executor(
                steps=convert(self.steps),
                on_success=convert(self.on_success),
                on_failure=convert(self.on_failure),
            ),
        )


def group(*tasks: Union[Signature, Iterable[Signature]], immutable: bool = False) -> Group:
    """Build a :class:`Group`: ``group(a.s(1), b.s(2))`` or ``group([a.s(i) for i in items])``."""
    if len(tasks) == 1 and not isinstance(tasks[0], Signature):
        return Group(tasks[0], immutable=immutable)
    return Group(tasks, immutable=immutable)  # type: ignore[arg-type]


def chord(header: Union[Group, Iterable[Signature]], body: Signature) -> Chain:
    """Celery's ``chord(header, body)``: the header's members side by side, then ``body``
    with their results as a list (its first argument if it is mutable)."""
    head = header if isinstance(header, Group) else Group(header)
    return Chain([head, body])


def nested(
    steps: Union[Signature, Chain, Sequence[Signature]],
    *,
    on_success: Callback = None,
    on_failure: Callback = None,
    name: str = "executor",
) -> Nested:
    """A chain with its own on_success and on_failure, as one step of another chain."""
    listed = list(steps.steps) if isinstance(steps, Chain) else [steps] if isinstance(steps, Signature) else list(steps)
    return Nested(
        listed,
        _callback_steps(on_success, "on_success"),
        _callback_steps(on_failure, "on_failure"),
        name=name,
    )


def chain(*tasks: Union[Signature, Chain, Sequence[Signature]]) -> Chain:
    """Build a :class:`Chain`; nested chains are flattened, a single list is accepted."""
    if len(tasks) == 1 and isinstance(tasks[0], (list, tuple)):
        tasks = tuple(tasks[0])
    steps: list[Signature] = []
    for item in tasks:
        if isinstance(item, Chain):
            steps.extend(item.steps)
        elif isinstance(item, Signature):
            steps.append(item)
        else:
            raise TypeError(f"chain() takes signatures (task.s()/task.si()), not {type(item).__name__}")
    return Chain(steps)
