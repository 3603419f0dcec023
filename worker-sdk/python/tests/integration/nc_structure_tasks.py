"""Waldur's provisioning throttle (``waldur_core/structure/tasks.py``), imports changed only.

Waldur counts the resources already CREATING in the same service settings
(here: tenant) and polls with ``self.retry()`` while there are too many. On
Baton that poll is a retry-later outcome, so the waiting step occupies no
worker between looks; the migration guide shows the broker-side throttle
that replaces the counting altogether.
"""

import nc_core_tasks as core_tasks  # was: from waldur_core.core import tasks as core_tasks
from nc_models import States as CoreStates  # was: from waldur_core.core.enums import CoreStates


class RetryUntilAvailableTask(core_tasks.Task):
    max_retries = 300
    default_retry_delay = 0.2  # Waldur: 5

    def pre_execute(self, instance):
        if not self.is_available(instance):
            self.retry()
        super().pre_execute(instance)

    def is_available(self, instance):
        return True


class BaseThrottleProvisionTask(RetryUntilAvailableTask):
    """
    Before starting resource provisioning, count how many resources
    are already in "creating" state and delay provisioning if there are too many of them.
    """

    DEFAULT_LIMIT = 1  # Waldur: 4

    def is_available(self, resource):
        usage = self.get_usage(resource)
        limit = self.get_limit(resource)
        return usage <= limit

    def get_usage(self, resource):
        model_class = type(resource)
        return len(model_class.objects.filter(state=CoreStates.CREATING, tenant=resource.tenant))

    def get_limit(self, resource):
        return self.DEFAULT_LIMIT


class ThrottleProvisionTask(BaseThrottleProvisionTask, core_tasks.BackendMethodTask):
    pass
