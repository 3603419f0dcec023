"""Waldur's core tasks (``waldur_core/core/tasks.py``), ported to Baton by changing imports only.

The bodies are Waldur's. The class statements are NodeConductor's Celery 3
form, ``class Task(CeleryTask)``: Waldur added a ``TaskType`` metaclass,
copied from Celery 4.3 out of ``celery.app.task`` internals, only to keep
class-based tasks registering themselves, and ``baton.celery.Task`` does
that on its own. The polling budgets are shortened (Waldur: 300 retries
every 5 s) so the tests end in seconds.
"""

import logging
import traceback

from baton.celery import Task as CeleryTask  # was: from celery import Task as CeleryTask

import nc_models as django_models  # was: from django.db import models as django_models
import nc_models as models  # was: from waldur_core.core import models
import nc_models as utils  # was: from waldur_core.core import utils
from nc_models import IntegrityError  # was: from django.db import IntegrityError
from nc_models import ObjectDoesNotExist  # was: from django.db.models import ObjectDoesNotExist
from nc_models import RuntimeStateException  # was: from waldur_core.core.exceptions import ...
from nc_models import States as CoreStates  # was: from waldur_core.core.enums import CoreStates
from nc_models import TransitionNotAllowed  # was: from django_fsm import TransitionNotAllowed

logger = logging.getLogger(__name__)


class StateChangeError(RuntimeError):
    pass


class Task(CeleryTask):
    """Base class for tasks that are run by executors.

    Provides standard way for input data deserialization.
    """

    @classmethod
    def get_description(cls, *args, **kwargs):
        raise NotImplementedError()

    def run(self, serialized_instance, *args, **kwargs):
        """Deserialize input data and start backend operation execution"""
        try:
            instance = utils.deserialize_instance(serialized_instance)
        except ObjectDoesNotExist as e:
            raise ObjectDoesNotExist(
                "Cannot restore instance from serialized object %s. Probably it was deleted."
                % serialized_instance
            ) from e

        self.args = args
        self.kwargs = kwargs

        self.pre_execute(instance)
        result = self.execute(instance, *self.args, **self.kwargs)
        self.post_execute(instance)
        if result and isinstance(result, django_models.Model):
            result = utils.serialize_instance(result)
        return result

    def pre_execute(self, instance):
        pass

    def execute(self, instance, *args, **kwargs):
        """Execute backend operation"""
        raise NotImplementedError("%s should implement method `execute`" % self.__class__.__name__)

    def post_execute(self, instance):
        pass


class EmptyTask(CeleryTask):
    def run(self, *args, **kwargs):
        pass


class StateTransitionTask(Task):
    """Execute instance state transition, changes instance action and action details if defined.

    It is impossible to change object action without state transition.
    """

    def state_transition(self, instance, transition_method, action=None, action_details=None):
        instance_description = f"{instance.__class__.__name__} instance `{instance}` (PK: {instance.pk})"
        old_state = instance.get_state_display()
        try:
            getattr(instance, transition_method)()
            if action is not None:
                instance.action = action
            if action_details is not None:
                instance.action_details = action_details
            instance.save()
        except IntegrityError:
            message = f"Could not change state of {instance_description}, using method `{transition_method}` due to concurrent update"
            raise StateChangeError(message)
        except TransitionNotAllowed:
            message = f"Could not change state of {instance_description}, using method `{transition_method}`. Current instance state: {instance.get_state_display()}."
            raise StateChangeError(message)
        else:
            logger.info(
                "State of %s changed from %s to %s, with method `%s`",
                instance_description,
                old_state,
                instance.get_state_display(),
                transition_method,
            )

    def pre_execute(self, instance):
        state_transition = self.kwargs.pop("state_transition", None)
        action = self.kwargs.pop("action", None)
        action_details = self.kwargs.pop("action_details", None)
        if state_transition is not None:
            self.state_transition(instance, state_transition, action, action_details)
        super().pre_execute(instance)

    # Empty execute method allows to use StateTransitionTask as standalone task
    def execute(self, instance, *args, **kwargs):
        return instance


class RuntimeStateChangeTask(Task):
    """Allows to change runtime state of instance before and after execution."""

    def update_runtime_state(self, instance, runtime_state):
        instance.runtime_state = runtime_state
        instance.save(update_fields=["runtime_state"])

    def pre_execute(self, instance):
        self.runtime_state = self.kwargs.pop("runtime_state", None)
        self.success_runtime_state = self.kwargs.pop("success_runtime_state", None)

        if self.runtime_state is not None:
            self.update_runtime_state(instance, self.runtime_state)
        super().pre_execute(instance)

    def post_execute(self, instance, *args, **kwargs):
        if self.success_runtime_state is not None:
            self.update_runtime_state(instance, self.success_runtime_state)
        super().post_execute(instance)

    # Empty execute method allows to use RuntimeStateChangeTask as standalone task
    def execute(self, instance, *args, **kwargs):
        return instance


class ResetErrorMessageTask(Task):
    def pre_execute(self, instance):
        if isinstance(instance, models.ErrorMessageMixin) and instance.error_message:
            instance.error_message = ""
            instance.error_traceback = ""
            instance.save(update_fields=["error_message", "error_traceback"])

        super().pre_execute(instance)


class BackendMethodTask(RuntimeStateChangeTask, StateTransitionTask, ResetErrorMessageTask):
    """Execute method of instance backend"""

    def get_backend(self, instance):
        return instance.get_backend()

    def execute(self, instance, backend_method, *args, **kwargs):
        backend = self.get_backend(instance)
        getattr(backend, backend_method)(instance, *args, **kwargs)


class DeletionTask(Task):
    """Delete instance"""

    def execute(self, instance):
        instance_description = f"{instance.__class__.__name__} instance `{instance}` (PK: {instance.pk})"
        instance.delete()
        logger.info("%s was successfully deleted", instance_description)


class ErrorMessageTask(Task):
    """Store error in error_message field.

    This task should not be called as immutable, because it expects result_uuid
    as input argument.
    """

    def run(self, result_id, serialized_instance, *args, **kwargs):
        self.result = self.AsyncResult(result_id)
        return super().run(serialized_instance, *args, **kwargs)

    def save_error_message(self, instance):
        if isinstance(instance, models.ErrorMessageMixin):
            try:
                error_message = instance.error_message or self.result.result or ""
                error_traceback = str(self.result.traceback)
            except AttributeError as ex:
                error_message = f"Internal error: {ex}"
                error_traceback = traceback.format_exc()

            instance.error_message = error_message
            instance.error_traceback = error_traceback

            instance.save(update_fields=["error_message", "error_traceback"])

            # log exception if instance is not already ERRED.
            if instance.state != CoreStates.ERRED:
                message = "Instance: %s.\n" % utils.serialize_instance(instance)
                message += "Error: %s.\n" % error_message
                message += error_traceback
                logger.exception(message)

    def execute(self, instance):
        self.save_error_message(instance)


class ErrorStateTransitionTask(ErrorMessageTask, StateTransitionTask):
    """Set instance as erred and save error message.

    This task should not be called as immutable, because it expects result_uuid
    as input argument.
    """

    def execute(self, instance):
        self.save_error_message(instance)
        self.state_transition(instance, "set_erred", action="", action_details={})


class PollRuntimeStateTask(Task):
    max_retries = 4  # Waldur: 300
    default_retry_delay = 0.2  # Waldur: 5

    def get_backend(self, instance):
        return instance.get_backend()

    def execute(self, instance, backend_pull_method, success_state, erred_state):
        backend = self.get_backend(instance)
        getattr(backend, backend_pull_method)(instance)
        instance.refresh_from_db()
        if instance.runtime_state not in (success_state, erred_state):
            self.retry()
        elif instance.runtime_state == erred_state:
            raise RuntimeStateException(
                "%s %s (PK: %s) runtime state become erred: %s"
                % (instance.__class__.__name__, instance, instance.pk, erred_state)
            )
        return instance


class PollBackendCheckTask(Task):
    max_retries = 4  # Waldur: 60
    default_retry_delay = 0.2  # Waldur: 5

    def get_backend(self, instance):
        return instance.get_backend()

    def execute(self, instance, backend_check_method):
        # backend_check_method should return True if object does not exist at backend
        backend = self.get_backend(instance)
        if not getattr(backend, backend_check_method)(instance):
            self.retry()
        return instance
