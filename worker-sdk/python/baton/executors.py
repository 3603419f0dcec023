"""NodeConductor's executors on Baton: port an executor by changing its base class's import.

An executor is one logical operation on one object (create a volume, delete
an instance): a chain of tasks, a success callback and a failure callback,
with ``pre_apply`` moving the object to ``*_SCHEDULED`` synchronously first.
:class:`BaseExecutor` keeps NodeConductor's (later Waldur's) hooks and
names, so Waldur's ``CreateExecutor``/``DeleteExecutor`` mixins and the
executors built on them run as they are, with ``BaseExecutor`` imported from
here::

    from baton.executors import BaseExecutor      # was: Waldur's own core/executors.py

What Baton adds underneath: the success link and the failure link are the
chain's on_success and on_failure, so the broker guarantees that exactly one
of them runs once the steps end, even when a worker dies (Celery's links were
lost with a lost worker and objects stayed CREATING until a sweeper marked
them erred); ``is_heavy_task`` routes *every* step and callback to the heavy
queue, where Celery's ``queue='heavy'`` reached only the first step; and the
failure link reads the error and the traceback from the failure record the
broker hands it, not from a result backend.
"""

from __future__ import annotations

from typing import Any, Optional, Union

from .canvas import Signature as _BatonSignature
from .canvas import nested
from .celery import AsyncResult, Chain, Signature, chain

Steps = Union[Signature, Chain]


class BaseExecutor:
    """A logical operation: :meth:`get_task_signature` + success and failure signatures.

    Every hook is a classmethod, as in NodeConductor, so an executor is used
    as ``VolumeCreateExecutor.execute(volume)`` without an instance.
    """

    is_heavy_task: Any = False
    """Route the whole operation to the heavy queue: a bool, or a
    classmethod ``(instance, **kwargs) -> bool``. ``execute(...,
    is_heavy_task=True)`` overrides it for one call."""

    @classmethod
    def get_task_signature(cls, instance: Any, serialized_instance: str, **kwargs: Any) -> Steps:
        """The steps: one signature (``task.si(serialized_instance)``) or a ``chain(...)``.

        Raises:
            NotImplementedError: every executor defines it.
        """
        raise NotImplementedError(f"Executor {cls.__name__} should implement method `get_task_signature`")

    @classmethod
    def get_success_signature(cls, instance: Any, serialized_instance: str, **kwargs: Any) -> Optional[Steps]:
        """Runs after the last step succeeded (Celery's ``link``); ``None`` for nothing."""
        return None

    @classmethod
    def get_failure_signature(cls, instance: Any, serialized_instance: str, **kwargs: Any) -> Optional[Steps]:
        """Runs once if a step failed for good (Celery's ``link_error``); ``None`` for nothing.

        A mutable signature (``ErrorStateTransitionTask().s(serialized_instance)``)
        is called as Celery called it, with the failed task's id first, and
        ``AsyncResult(failed_id)`` in its body reads the error and traceback.
        """
        return None

    @classmethod
    def pre_apply(cls, instance: Any, **kwargs: Any) -> None:
        """Synchronous work before the chain is submitted (``schedule_deleting()``, save)."""

    @classmethod
    def post_apply(cls, instance: Any, **kwargs: Any) -> None:
        """Synchronous work after the chain is submitted."""

    @classmethod
    def serialize_instance(cls, instance: Any) -> str:
        """How the object travels to the tasks: NodeConductor's ``serialize_instance``.

        A Django model becomes ``"app_label.model:pk"`` (``str(model._meta)``
        and the primary key), as ``core_utils.serialize_instance`` made it;
        a string is taken as already serialized. Override it for other objects.

        Raises:
            TypeError: the object is neither.
        """
        if isinstance(instance, str):
            return instance
        meta = getattr(instance, "_meta", None)
        pk = getattr(instance, "pk", None)
        if meta is not None and pk is not None:
            return f"{meta}:{pk}"
        raise TypeError(
            f"{cls.__name__}.serialize_instance cannot serialize {type(instance).__name__}: "
            "override it, or pass a Django model or a serialized string"
        )

    @classmethod
    def heavy(cls, instance: Any, **kwargs: Any) -> bool:
        """Whether :attr:`is_heavy_task` routes this operation to the heavy queue."""
        flag = cls.is_heavy_task
        return bool(flag(instance, **kwargs)) if callable(flag) else bool(flag)

    @classmethod
    def execute(
        cls,
        instance: Any,
        is_async: bool = True,
        countdown: Optional[float] = 2,
        is_heavy_task: Optional[bool] = None,
        **kwargs: Any,
    ) -> Any:
        """Run the operation: ``pre_apply``, submit the chain with its callbacks, ``post_apply``.

        Returns the chain's :class:`~baton.celery.AsyncResult`. With
        ``is_async=False`` the chain still runs on workers (Baton has no
        eager mode) and this waits for it: it returns the result of the last
        step, or raises the failed task's exception once the failure
        signature has run.
        """
        cls.pre_apply(instance, **kwargs)
        result = cls.apply_signature(
            instance, is_async=is_async, countdown=countdown, is_heavy_task=is_heavy_task, **kwargs
        )
        cls.post_apply(instance, **kwargs)
        return result

    @classmethod
    def apply_signature(
        cls,
        instance: Any,
        is_async: bool = True,
        countdown: Optional[float] = None,
        is_heavy_task: Optional[bool] = None,
        **kwargs: Any,
    ) -> Any:
        """Build the signatures and submit them as one chain (no ``pre_apply``)."""
        serialized_instance = cls.serialize_instance(instance)
        signature = cls.get_task_signature(instance, serialized_instance, **kwargs)
        link = cls.get_success_signature(instance, serialized_instance, **kwargs)
        link_error = cls.get_failure_signature(instance, serialized_instance, **kwargs)
        heavy = cls.heavy(instance, **kwargs) if is_heavy_task is None else bool(is_heavy_task)
        steps = signature if isinstance(signature, Chain) else chain(signature)
        result: AsyncResult = steps.apply_async(link=link, link_error=link_error, countdown=countdown, heavy=heavy)
        if is_async:
            return result
        return result.get()

    @classmethod
    def as_signature(cls, instance: Any, **kwargs: Any) -> _BatonSignature:
        """This executor as one step of another executor's chain (a nested executor).

        The step runs this executor's task signature as a child chain with its
        own success and failure signatures: the outer chain goes on with its
        result once it succeeded (after its success signature), or fails with
        its failure record once it failed (after its failure signature), so
        the nested object never stays in ``*_SCHEDULED``. Cancelling the
        outer chain cancels it.

        Unlike Waldur, which ran ``pre_apply`` as a task when the nested
        executor's turn came, Baton runs it here, when the outer chain is
        built: a broker cannot call code of the submitting process later.
        """
        cls.pre_apply(instance, **kwargs)
        serialized_instance = cls.serialize_instance(instance)
        signature = cls.get_task_signature(instance, serialized_instance, **kwargs)
        link = cls.get_success_signature(instance, serialized_instance, **kwargs)
        link_error = cls.get_failure_signature(instance, serialized_instance, **kwargs)
        steps = signature if isinstance(signature, Chain) else chain(signature)
        return nested(steps, on_success=link, on_failure=link_error, name=cls.__name__)
