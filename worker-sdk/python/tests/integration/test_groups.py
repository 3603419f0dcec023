"""Groups, chords and nested executors from Python, against the real broker."""

import pytest

from baton import ChainCancelled, ChainFailed, chain, chord, group, nested


def test_a_chord_receives_the_members_results_in_member_order(tasks, start_worker):
    start_worker(concurrency=4)
    # The first member sleeps, so it ends last; the list keeps member order.
    header = group(tasks.sleeper.si(0.3, 1), tasks.add.si(2, 0), tasks.add.si(3, 0))
    r = chord(header, tasks.whoami.s())()
    out = r.get(timeout=30)
    assert out["args"] == [[1, 2, 3]]
    info = r.info()
    fan = info.steps[0]
    assert (fan.name, fan.members, fan.members_succeeded) == ("group", 3, 3)
    assert len(fan.child_chain_ids) == 3


def test_a_mutable_group_hands_the_previous_result_to_each_member(tasks, start_worker):
    start_worker(concurrency=4)
    r = (tasks.add.si(1, 2) | group(tasks.add.s(10), tasks.add.s(20)) | tasks.whoami.s()).delay()
    assert r.get(timeout=30)["args"] == [[13, 23]]
    # A group submitted alone succeeds with the list.
    alone = group([tasks.add.si(i, i) for i in range(5)]).delay()
    assert alone.get(timeout=30) == [0, 2, 4, 6, 8]


def test_the_first_failure_fails_the_group_and_on_failure_gets_that_record(tasks, start_worker, events):
    start_worker(concurrency=4)
    r = chain(group(tasks.sleeper.si(30, "a"), tasks.boom.si("vm-1")), tasks.add.s(1)).apply_async(
        on_failure=tasks.set_erred.s("vm-1")
    )
    with pytest.raises(ChainFailed) as failed:
        r.get(timeout=30)
    assert failed.value.record["task_name"] == "demo.boom"
    erred = events.wait_for("set_erred")[0]
    assert erred["failure"]["error_type"] == "ValueError"
    assert "backend refused vm-1" in erred["failure"]["message"]
    events.wait_for("sleeper_cancelled", tag="a")
    assert not events.all("sleeper_end")


def test_a_nested_executor_runs_its_own_callbacks_and_its_parent_goes_on(tasks, start_worker, events):
    start_worker(concurrency=2)
    volume = nested(
        chain(tasks.add.si(2, 3), tasks.add.s(10)),
        on_success=tasks.set_ok.si("volume"),
        on_failure=tasks.set_erred.s("volume"),
        name="VolumeCreateExecutor",
    )
    r = chain(tasks.set_ok.si("begin"), volume, tasks.add.s(100)).apply_async(on_success=tasks.set_ok.si("vm"))
    assert r.get(timeout=30) == 115
    assert [e["uuid"] for e in events.all("set_ok")] == ["begin", "volume", "vm"]
    assert r.info().steps[1].name == "VolumeCreateExecutor"


def test_a_failed_nested_executor_fails_its_parent_after_its_own_on_failure(tasks, start_worker, events):
    start_worker(concurrency=2)
    volume = chain(tasks.boom.si("vol")).as_step(on_failure=tasks.set_erred.s("volume"))
    r = chain(volume, tasks.set_ok.si("never")).apply_async(on_failure=tasks.set_erred.s("vm"))
    with pytest.raises(ChainFailed):
        r.get(timeout=30)
    erred = events.wait_for("set_erred", count=2)
    assert [e["uuid"] for e in erred] == ["volume", "vm"]
    assert erred[1]["failure"]["task_name"] == "demo.boom"
    assert not events.all("set_ok")


def test_cancelling_the_parent_cancels_its_members(tasks, start_worker, events):
    start_worker(concurrency=4)
    r = group(tasks.sleeper.si(30, "x"), tasks.sleeper.si(30, "y")).delay()
    events.wait_for("sleeper_start", count=2)
    r.cancel("operator")
    with pytest.raises(ChainCancelled):
        r.get(timeout=30)
    events.wait_for("sleeper_cancelled", count=2)
    assert not events.all("sleeper_end")


def test_groups_and_nested_executors_build_without_a_broker(tasks):
    g = group(tasks.add.s(1), tasks.add.s(2))
    assert g.delay  # a step like any other
    wire = chord(g, tasks.whoami.s()).to_request()
    assert [m.name for m in wire.steps[0].members] == ["demo.add", "demo.add"]
    assert wire.steps[0].name == "group"
    partial = g.clone([5])
    assert [list(m.args) for m in partial.members] == [[1, 5], [2, 5]]  # as each member's clone
    n = nested(tasks.add.si(1, 1), on_failure=tasks.set_erred.s("x")).to_pb()
    assert n.executor.steps[0].name == "demo.add"
    assert n.executor.on_failure[0].name == "demo.set_erred"
    with pytest.raises(ValueError):
        group()
    with pytest.raises(TypeError):
        group(1, 2)
