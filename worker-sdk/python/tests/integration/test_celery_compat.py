"""Celery code on Baton with only its imports changed: the seed, Waldur's executors, retries, errbacks.

Workers are started the Celery way, ``python -m baton worker --app MODULE``,
with the broker's address in ``$BATON_ADDR``; the test process submits
through ``baton.celery``'s current app, pointed at the same broker.
"""

import re
from pathlib import Path

import pytest

from baton_harness import wait_until

PRINTS = re.compile(r"\*\* (Start|End|Fast|Dangerous|Heavy) (\d+)")


def prints(worker):
    """The seed's ``print`` lines a worker wrote, in order (matched anywhere: two
    threads' lines may share a line of the log)."""
    return PRINTS.findall(Path(worker.log_path).read_text(errors="replace"))


@pytest.fixture
def celery_app(broker, monkeypatch):
    from baton.celery import current_app

    monkeypatch.setenv("BATON_ADDR", broker.address)
    app = current_app._get_current_object()
    app.close()  # a channel to an earlier test's broker
    yield app
    app.close()


@pytest.fixture
def nc_db(tmp_path, monkeypatch):
    import nc_models

    path = tmp_path / "nc.sqlite3"
    monkeypatch.setenv("NC_TEST_DB", str(path))
    nc_models.create_schema()
    return path


@pytest.fixture
def nc_worker(celery_app, nc_db, start_worker):
    def start(**kwargs):
        return start_worker(app="nc_openstack", extra_env={"NC_TEST_DB": str(nc_db)}, broker_from_env=True,
                            **kwargs)

    return start


# -- the seed ---------------------------------------------------------------------------


def test_seed_demo_slow_parts_run_one_after_another(celery_app, start_worker):
    """`demo.delay(10)` twice: "they will be executed one after another due to
    concurrency=1 on "slow" subtask", though the worker has four threads."""
    import seed_celery

    worker = start_worker(app="seed_celery", concurrency=4, broker_from_env=True)
    seed_celery.demo.delay(10)
    seed_celery.demo.delay(10)
    wait_until(lambda: [p for p in prints(worker) if p[0] == "Fast"][1:], 30, "both fast steps")
    order = [what for what, uuid in prints(worker)]
    assert [w for w in order if w in ("Start", "End")] == ["Start", "End", "Start", "End"]
    assert order.index("Fast") > order.index("End"), "a fast step ran before any slow one ended"
    assert {uuid for _, uuid in prints(worker)} == {"10"}


def test_seed_dangerous_and_heavy(celery_app, start_worker):
    """`@shared_task @throttle` runs; `is_heavy_task=True` goes only to the heavy queue's worker."""
    import seed_celery

    general = start_worker(app="seed_celery", concurrency=3, broker_from_env=True)
    heavy = start_worker(app="seed_celery", queues=["heavy"], broker_from_env=True)
    results = [seed_celery.dangerous.delay(i) for i in range(3)] + [seed_celery.heavy.delay(1)]
    assert [r.get(timeout=30) for r in results] == [None] * 4
    assert all(r.state == "SUCCESS" for r in results)
    assert sorted(u for w, u in prints(general) if w == "Dangerous") == ["0", "1", "2"]
    assert ("Heavy", "1") in prints(heavy)
    assert not [p for p in prints(general) if p[0] == "Heavy"]


# -- Waldur's volume executors ---------------------------------------------------------------


def wait_volume(pk, states, timeout=30):
    """The volume once its state is in ``states`` ("deleted": once it is gone)."""
    from nc_models import ObjectDoesNotExist, Volume

    def reached():
        try:
            volume = Volume.objects.get(pk)
        except ObjectDoesNotExist:
            return "deleted" if "deleted" in states else None
        return volume if volume.state in states else None

    return wait_until(reached, timeout, f"volume {pk} in {states}")


def test_create_executor_success(nc_worker):
    """begin_creating and create_volume, polls until available (one self.retry), set_ok link."""
    from nc_models import Volume, history
    from nc_openstack import VolumeCreateExecutor

    nc_worker(concurrency=2)
    volume = Volume.objects.create(name="vol-1")
    result = VolumeCreateExecutor.execute(volume)
    assert result.get(timeout=30) == f"openstack.volume:{volume.pk}"
    done = wait_volume(volume.pk, {"OK"})
    assert history(volume.pk) == [
        "begin_creating", "create_volume", "pull_volume_runtime_state", "pull_volume_runtime_state", "set_ok",
    ]
    assert (done.runtime_state, done.backend_id, done.action, done.error_message) == (
        "available", f"cinder-{volume.pk}", "", "")
    assert result.state == "SUCCESS"
    poll_step = result.baton.info().steps[1]
    assert (poll_step.polls, poll_step.retries) == (1, 0)  # one self.retry(), a retry-later outcome


def test_create_executor_failure_errback_reads_the_traceback_by_id(nc_worker):
    """create_volume raises: ErrorStateTransitionTask().s(vol) runs as run(failed_id, vol),
    and AsyncResult(failed_id) gives it the error and the worker's traceback."""
    from nc_models import Volume, history
    from nc_openstack import VolumeCreateExecutor

    nc_worker()
    volume = Volume.objects.create(name="fail-create-1")
    result = VolumeCreateExecutor.execute(volume)
    erred = wait_volume(volume.pk, {"ERRED"})
    assert history(volume.pk) == ["begin_creating", "create_volume", "set_erred"]
    assert erred.error_message == "Quota exceeded for volumes (requested 1 for fail-create-1)"
    assert erred.error_traceback.startswith("Traceback (most recent call last)")
    assert "raise CinderError(" in erred.error_traceback
    assert erred.error_traceback.rstrip().endswith(
        "CinderError: Quota exceeded for volumes (requested 1 for fail-create-1)")
    with pytest.raises(Exception, match="Quota exceeded") as raised:
        result.get(timeout=30)
    assert type(raised.value).__name__ == "CinderError"
    assert result.state == "FAILURE"
    assert "raise CinderError(" in result.traceback


@pytest.mark.parametrize("name, pulls, message", [
    ("stuck-1", 5, "Can't retry nc_core_tasks.PollRuntimeStateTask"),  # 1 + max_retries (4) looks
    ("broken-1", 1, "runtime state become erred: error"),
])
def test_create_executor_polling_ends_erred(nc_worker, name, pulls, message):
    """A volume that never becomes available exhausts Celery's max_retries (MaxRetriesExceededError);
    one that goes to `error` raises RuntimeStateException. Both end ERRED through the errback."""
    from nc_models import Volume, history
    from nc_openstack import VolumeCreateExecutor

    nc_worker()
    volume = Volume.objects.create(name=name)
    result = VolumeCreateExecutor.execute(volume, countdown=0)
    erred = wait_volume(volume.pk, {"ERRED"})
    assert history(volume.pk).count("pull_volume_runtime_state") == pulls
    assert history(volume.pk)[-1] == "set_erred"
    assert message in erred.error_message
    assert "Traceback (most recent call last)" in erred.error_traceback
    poll_step = result.baton.info().steps[1]
    assert poll_step.polls == pulls - 1


def test_create_executor_throttles_provisioning_per_tenant(nc_worker):
    """Waldur's ThrottleProvisionTask (CREATING count <= limit, else self.retry()) as a
    retry-later poll: three volumes of one tenant, at most limit + 1 CREATING at once."""
    from nc_models import Volume, history
    from nc_openstack import VolumeCreateExecutor

    nc_worker(concurrency=1)
    volumes = [Volume.objects.create(name=f"vol-{i}", tenant="t9") for i in range(3)]
    results = [VolumeCreateExecutor.execute(v, countdown=0) for v in volumes]
    for r in results:
        r.get(timeout=60)
    spans = []
    for pk, what, t in history():
        if what == "begin_creating":
            spans.append([t, None, pk])
        elif what == "set_ok":
            next(s for s in spans if s[2] == pk)[1] = t
    most = max(sum(1 for s in spans if s[0] <= t < s[1]) for t, _, _ in spans)
    assert most <= 2  # DEFAULT_LIMIT 1, and Waldur lets usage == limit start
    assert sum(r.baton.info().steps[0].polls for r in results) >= 1, "the throttle never made a step wait"
    assert all(Volume.objects.get(v.pk).state == "OK" for v in volumes)


def test_heavy_executor_runs_every_step_and_callback_on_heavy_workers(nc_worker):
    """execute(..., is_heavy_task=True): Celery's queue='heavy' reached the first step only."""
    import os

    from nc_models import Volume, history
    from nc_openstack import VolumeCreateExecutor

    nc_worker(concurrency=2)
    heavy = nc_worker(queues=["heavy"], concurrency=2)
    volume = Volume.objects.create(name="vol-heavy")
    VolumeCreateExecutor.execute(volume, is_heavy_task=True, countdown=0).get(timeout=30)
    wait_volume(volume.pk, {"OK"})
    import nc_models

    with nc_models._db() as conn:
        pids = {row[0] for row in conn.execute("SELECT pid FROM log WHERE pk = ?", (volume.pk,))}
    assert pids == {heavy.pid}
    assert os.getpid() not in pids


def test_delete_executor_success(nc_worker):
    """pre_apply schedules the deletion synchronously; the chain deletes and polls; DeletionTask drops the row."""
    from nc_models import Volume, history
    from nc_openstack import VolumeDeleteExecutor

    nc_worker()
    volume = Volume.objects.create(name="vol-2", state="OK", backend_id="cinder-2")
    VolumeDeleteExecutor.execute(volume)
    assert Volume.objects.get(volume.pk).state == "DELETION_SCHEDULED"  # before the 2 s countdown ends
    wait_volume(volume.pk, {"deleted"})
    assert history(volume.pk) == [
        "schedule_deleting", "begin_deleting", "delete_volume", "is_volume_deleted", "is_volume_deleted",
        "deleted",
    ]


@pytest.mark.parametrize("force", [False, True])
def test_delete_executor_failure(nc_worker, force):
    """delete_volume fails: the volume ends ERRED with the error, or (force) is deleted anyway."""
    from nc_models import Volume, history
    from nc_openstack import VolumeDeleteExecutor

    nc_worker()
    volume = Volume.objects.create(name="fail-delete-1", state="ERRED" if force else "OK", backend_id="cinder-3")
    VolumeDeleteExecutor.execute(volume, force=force, countdown=0)
    if force:
        wait_volume(volume.pk, {"deleted"})
        assert history(volume.pk) == ["schedule_deleting", "begin_deleting", "delete_volume", "deleted"]
    else:
        erred = wait_volume(volume.pk, {"ERRED"})
        assert history(volume.pk) == ["schedule_deleting", "begin_deleting", "delete_volume", "set_erred"]
        assert erred.error_message == "Volume cinder-3 is still attached"
        assert "CinderError: Volume cinder-3 is still attached" in erred.error_traceback


def test_delete_executor_without_backend_id_only_transitions(nc_worker):
    from nc_models import Volume, history
    from nc_openstack import VolumeDeleteExecutor

    nc_worker()
    volume = Volume.objects.create(name="never-created", state="ERRED")
    VolumeDeleteExecutor.execute(volume, countdown=0).get(timeout=30)
    wait_volume(volume.pk, {"deleted"})
    assert history(volume.pk) == ["schedule_deleting", "begin_deleting", "deleted"]


def _instance_delete_executor():
    """An executor in the shape of Waldur's ``InstanceDeleteExecutor`` without a backend
    id: its chain deletes each volume with ``VolumeDeleteExecutor.as_signature(volume)``
    (a nested executor, with its own success and failure signatures), then the
    instance. The volume stands in for the instance: the test models have no other."""
    import nc_core_executors as core_executors
    import nc_core_tasks as core_tasks
    from baton.celery import chain
    from nc_openstack import VolumeDeleteExecutor

    class InstanceDeleteExecutor(core_executors.DeleteExecutor):
        @classmethod
        def get_task_signature(cls, instance, serialized_instance, volumes=(), **kwargs):
            return chain(
                core_tasks.StateTransitionTask().si(serialized_instance, state_transition="begin_deleting"),
                *[VolumeDeleteExecutor.as_signature(volume) for volume in volumes],
            )

    return InstanceDeleteExecutor


def test_nested_executors_delete_each_volume_then_the_instance(nc_worker):
    from nc_models import Volume, history

    nc_worker(concurrency=2)
    instance = Volume.objects.create(name="vm-1", state="OK")
    volumes = [Volume.objects.create(name=f"vm-1-disk-{i}", state="OK", backend_id=f"cinder-d{i}") for i in (1, 2)]
    _instance_delete_executor().execute(instance, volumes=volumes, countdown=0).get(timeout=30)
    wait_volume(instance.pk, {"deleted"})
    for volume in volumes:
        wait_volume(volume.pk, {"deleted"})
        # as_signature ran the volume's pre_apply when the instance's chain was built
        assert history(volume.pk)[0] == "schedule_deleting"
        assert history(volume.pk)[-1] == "deleted"
    assert history(instance.pk) == ["schedule_deleting", "begin_deleting", "deleted"]


def test_a_failed_nested_executor_errs_its_volume_then_the_instance(nc_worker):
    """The second volume cannot be deleted: its own errback (Celery's call shape, the failed
    task's id) marks it ERRED, then the instance's errback marks the instance ERRED with the
    same error; the first volume, deleted before, stays deleted."""
    from nc_models import Volume, history

    nc_worker(concurrency=2)
    instance = Volume.objects.create(name="vm-2", state="OK")
    ok = Volume.objects.create(name="vm-2-disk", state="OK", backend_id="cinder-e1")
    stuck = Volume.objects.create(name="fail-delete-vm-2", state="OK", backend_id="cinder-e2")
    _instance_delete_executor().execute(instance, volumes=[ok, stuck], countdown=0)
    erred = wait_volume(stuck.pk, {"ERRED"})
    assert erred.error_message == "Volume cinder-e2 is still attached"
    vm = wait_volume(instance.pk, {"ERRED"})
    assert vm.error_message == "Volume cinder-e2 is still attached"
    assert "CinderError: Volume cinder-e2 is still attached" in vm.error_traceback
    wait_volume(ok.pk, {"deleted"})
    assert history(stuck.pk)[-1] == "set_erred"
    assert history(instance.pk) == ["schedule_deleting", "begin_deleting", "set_erred"]


# -- retry budgets and errback shapes ----------------------------------------------------------


@pytest.fixture
def probes(celery_app, start_worker):
    import celery_probes

    start_worker(app="celery_probes", concurrency=2, broker_from_env=True)
    return celery_probes


def test_self_retry_budget_is_celerys(probes, events):
    """self.retry() with max_retries=2: three runs (request.retries 0, 1, 2), then MaxRetriesExceededError."""
    from baton.celery import MaxRetriesExceededError

    result = probes.poll_forever.delay("a")
    with pytest.raises(Exception) as raised:
        result.get(timeout=30)
    assert type(raised.value).__name__ == "MaxRetriesExceededError"
    assert not isinstance(raised.value, MaxRetriesExceededError)  # rebuilt from the record, not unpickled
    assert [e["retries"] for e in events.all("poll")] == [0, 1, 2]
    assert len({e["id"] for e in events.all("poll")}) == 1  # request.id: one task across its retries


def test_self_retry_with_exc_raises_exc_when_the_budget_is_spent(probes, events):
    result = probes.poll_then_give_up_with_exc.delay("b")
    with pytest.raises(LookupError, match="volume vol-7 not found yet"):
        result.get(timeout=30)
    assert [e["retries"] for e in events.all("poll")] == [0, 1]  # max_retries=1 given to this call


def test_autoretry_for_retries_then_fails_and_others_fail_at_once(probes, events):
    flaky = probes.flaky.delay("c")
    with pytest.raises(ConnectionError, match="backend is down"):
        flaky.get(timeout=30)
    assert [e["retries"] for e in events.all("flaky")] == [0, 1, 2]
    assert flaky.baton.info().steps[0].retries == 2  # Baton's retried failures, with the broker's backoff
    once = probes.not_retried.delay("d")
    with pytest.raises(ValueError, match="bad size"):
        once.get(timeout=30)
    assert [e["retries"] for e in events.all("not_retried")] == [0]  # not in autoretry_for: no retry


def test_link_and_both_errback_shapes(probes, events):
    """link gets the result; a Celery link_error gets the failed id; Baton's on_failure the record."""
    from baton.celery import chain

    ok = chain(probes.add.si(1, 2), probes.add.s(10)).apply_async(link=probes.done.s("sum"))
    assert ok.get(timeout=30) == 13
    events.wait_for("done")
    assert events.all("done")[0]["result"] == 13

    probes.not_retried.apply_async(("e",), link_error=probes.celery_errback.s("celery"))
    probes.not_retried.apply_async(("f",), on_failure=probes.baton_errback.s("baton"))
    celery_shape = events.wait_for("errback")[0]
    baton_shape = events.wait_for("baton_errback")[0]
    assert celery_shape["state"] == "FAILURE"
    assert (celery_shape["result_type"], celery_shape["result"]) == ("ValueError", "bad size")
    assert 'raise ValueError("bad size")' in celery_shape["traceback"]
    failed_run = next(e for e in events.all("not_retried") if e["tag"] == "e")
    assert celery_shape["failed_id"] == failed_run["id"]  # the failed task's id, as Celery passed it
    assert baton_shape["failure"]["error_type"] == "ValueError"
    assert baton_shape["failure"]["task_name"] == "celery_probes.not_retried"
