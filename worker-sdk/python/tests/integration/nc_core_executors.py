"""Waldur's core executors (``waldur_core/core/executors.py``): its mixins on Baton's BaseExecutor.

Waldur's own ``BaseExecutor`` is replaced by the import below; the mixins
and default executors are Waldur's.
"""

from baton.executors import BaseExecutor  # was: Waldur's BaseExecutor, defined in this module

import nc_core_tasks as tasks  # was: from waldur_core.core import tasks


class ExecutorException(Exception):
    pass


class ErrorExecutorMixin:
    """Set object as erred on fail."""

    @classmethod
    def get_failure_signature(cls, instance, serialized_instance, **kwargs):
        return tasks.ErrorStateTransitionTask().s(serialized_instance)


class SuccessExecutorMixin:
    """Set object as OK on success, cleanup action and its details."""

    @classmethod
    def get_success_signature(cls, instance, serialized_instance, **kwargs):
        return tasks.StateTransitionTask().si(
            serialized_instance, state_transition="set_ok", action="", action_details={}
        )


class DeleteExecutorMixin:
    """Delete object on success or if force flag is enabled"""

    @classmethod
    def get_success_signature(cls, instance, serialized_instance, **kwargs):
        return tasks.DeletionTask().si(serialized_instance)

    @classmethod
    def get_failure_signature(cls, instance, serialized_instance, force=False, **kwargs):
        if force:
            return tasks.DeletionTask().si(serialized_instance)
        else:
            return tasks.ErrorStateTransitionTask().s(serialized_instance)


class EmptyExecutor(BaseExecutor):
    @classmethod
    def get_task_signature(cls, *args, **kwargs):
        return tasks.EmptyTask().si()


class CreateExecutor(SuccessExecutorMixin, ErrorExecutorMixin, BaseExecutor):
    """Default states transition for object creation.

    - mark object as OK on success creation;
    - mark object as erred on failed creation;
    """


class DeleteExecutor(DeleteExecutorMixin, BaseExecutor):
    """Default states transition for object deletion.

    - schedule deleting before deletion;
    - delete object on success deletion;
    - mark object as erred on failed deletion;
    """

    @classmethod
    def pre_apply(cls, instance, **kwargs):
        instance.schedule_deleting()
        instance.save(update_fields=["state"])
