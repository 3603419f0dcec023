"""Waldur's OpenStack volume executors (``waldur_openstack/executors.py``), imports changed only.

The worker serves these with ``python -m baton worker --app nc_openstack``
(Celery's ``-A`` habit): importing the module registers every task class.
"""

from baton.celery import chain  # was: from celery import chain

import nc_core_executors as core_executors  # was: from waldur_core.core import executors as core_executors
import nc_core_tasks as core_tasks  # was: from waldur_core.core import tasks as core_tasks
import nc_structure_tasks as structure_tasks  # was: from waldur_core.structure import tasks as structure_tasks


class VolumeCreateExecutor(core_executors.CreateExecutor):
    @classmethod
    def get_task_signature(cls, volume, serialized_volume, **kwargs):
        return chain(
            structure_tasks.ThrottleProvisionTask().si(
                serialized_volume, "create_volume", state_transition="begin_creating"
            ),
            core_tasks.PollRuntimeStateTask()
            .si(
                serialized_volume,
                backend_pull_method="pull_volume_runtime_state",
                success_state="available",
                erred_state="error",
            )
            .set(countdown=0.3),  # Waldur: 30
        )


class VolumeDeleteExecutor(core_executors.DeleteExecutor):
    @classmethod
    def get_task_signature(cls, volume, serialized_volume, **kwargs):
        if volume.backend_id:
            return chain(
                core_tasks.BackendMethodTask().si(
                    serialized_volume, "delete_volume", state_transition="begin_deleting"
                ),
                core_tasks.PollBackendCheckTask().si(serialized_volume, "is_volume_deleted"),
            )
        else:
            return core_tasks.StateTransitionTask().si(serialized_volume, state_transition="begin_deleting")
