"""Periodic schedules from Python: app.schedule(...) and its companions."""

import grpc
import pytest

from baton_harness import wait_until


def test_a_schedule_fires_its_chain_and_stops_when_paused_and_removed(tasks, start_worker):
    start_worker(queues=["general"], concurrency=2)
    app = tasks.app
    added = app.schedule("py-every-second", tasks.add.si(2, 3), every=1)
    assert len(added.next_fires_unix_ms) == 5
    assert added.next_fires_unix_ms[0] == added.created_unix_ms + 1000

    def fired():
        [info] = [s for s in app.schedules() if s.schedule.name == "py-every-second"]
        return info.last_chain_id

    last = wait_until(fired, 20, "a fire of the schedule")
    assert app.AsyncResult(last).get(timeout=30) == 5

    paused = app.pause_schedule("py-every-second")
    assert paused.schedule.paused and list(paused.next_fires_unix_ms) == []
    resumed = app.resume_schedule("py-every-second")
    assert not resumed.schedule.paused and len(resumed.next_fires_unix_ms) == 5
    app.remove_schedule("py-every-second")
    assert app.schedules() == []


def test_a_bad_schedule_is_refused_naming_what_is_wrong(tasks):
    with pytest.raises(grpc.RpcError) as refused:
        tasks.app.schedule("nightly", tasks.add.si(1, 1), cron="0 9 * * *", timezone="Mars/Olympus")
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not an IANA time zone" in refused.value.details()
    with pytest.raises(grpc.RpcError) as unknown:
        tasks.app.remove_schedule("nope")
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
