"""The seed's three examples, against the real broker."""

import pytest

from baton import chain


def intervals(events, start, end, key):
    starts = {e[key]: e["t"] for e in events.all(start)}
    ends = {e[key]: e["t"] for e in events.all(end)}
    return sorted((starts[k], ends[k]) for k in starts)


def assert_no_overlap(spans):
    for (s1, e1), (s2, e2) in zip(spans, spans[1:]):
        assert s2 >= e1, f"overlap: {s1:.3f}-{e1:.3f} and {s2:.3f}-{e2:.3f}"


def test_demo_slow_parts_never_overlap_and_fast_follows_slow(tasks, start_worker, events):
    """`demo.delay(10)` twice: the demo task submits chain(slow.si, fast.si) from
    inside a worker; the in-body throttle on vm:10 serializes the slow parts
    across two worker processes, and each fast runs after its own slow."""
    start_worker(concurrency=2)
    start_worker(concurrency=2)
    outer = [tasks.demo.delay(10), tasks.demo.delay(10)]
    inner = [tasks.app.AsyncResult(r.get(timeout=30)) for r in outer]
    assert [r.get(timeout=30) for r in inner] == ["fast 10", "fast 10"]

    slow_spans = {}
    for e in events.all("slow_start"):
        slow_spans[e["chain_id"]] = [e["t"], None]
    for e in events.all("slow_end"):
        slow_spans[e["chain_id"]][1] = e["t"]
    assert set(slow_spans) == {r.id for r in inner}
    assert_no_overlap(sorted(tuple(v) for v in slow_spans.values()))
    for e in events.all("fast"):
        assert e["t"] >= slow_spans[e["chain_id"]][1], "fast ran before its slow ended"


def test_throttle_is_per_key(tasks, start_worker, events):
    """A different key is a different identity: slow(11) runs beside slow(10)."""
    start_worker(concurrency=3)
    results = [chain(tasks.slow.si(u), tasks.fast.si(u)).delay() for u in (10, 10, 11)]
    assert [r.get(timeout=30) for r in results] == ["fast 10", "fast 10", "fast 11"]
    by_uuid = {}
    for e in events.all("slow_start"):
        by_uuid.setdefault(e["uuid"], []).append(e["t"])
    ends = {}
    for e in events.all("slow_end"):
        ends.setdefault(e["uuid"], []).append(e["t"])
    eleven = (by_uuid[11][0], ends[11][0])
    first_ten = (min(by_uuid[10]), min(ends[10]))
    assert eleven[0] < first_ten[1] and first_ten[0] < eleven[1], "slow(11) waited for vm:10"


def test_in_body_throttle_in_async_tasks(tasks, start_worker, events):
    """`async with throttle(...)` in coroutine tasks serializes the same way."""
    start_worker(concurrency=3)
    results = [tasks.async_slow.delay(7) for _ in range(3)]
    assert [r.get(timeout=30) for r in results] == [7, 7, 7]
    spans = sorted(
        (s["t"], e["t"])
        for s, e in zip(
            sorted(events.all("slow_start"), key=lambda e: e["t"]),
            sorted(events.all("slow_end"), key=lambda e: e["t"]),
        )
    )
    assert len(spans) == 3
    assert_no_overlap(spans)


@pytest.mark.parametrize("task", ["dangerous", "dangerous_seed"])
def test_whole_task_throttle(tasks, start_worker, events, task):
    """`@tasks.task(throttle=1)` and the seed's bare `@throttle`: a worker with
    four free slots still runs one at a time, because the broker dispatches
    only when the declared slot is free."""
    start_worker(concurrency=4)
    results = [getattr(tasks, task).delay(i) for i in range(4)]
    assert sorted(r.get(timeout=30) for r in results) == [0, 1, 2, 3]
    spans = intervals(events, "dangerous_start", "dangerous_end", "uuid")
    assert len(spans) == 4
    assert_no_overlap(spans)


def most_in_a_window(times, window):
    return max(sum(1 for u in times if t <= u < t + window) for t in times)


def test_a_task_rate_spaces_the_starts_of_every_worker(tasks, start_worker, events):
    """`@app.task(rate="5/s")`: two workers with eight free slots between them
    still start at most 5 a second (a tenth of a second left for delivery
    jitter), and 12 tasks take at least 11 intervals of 200 ms."""
    start_worker(concurrency=4)
    start_worker(concurrency=4)
    results = [tasks.rated.delay(i) for i in range(12)]
    assert sorted(r.get(timeout=60) for r in results) == list(range(12))
    times = sorted(e["t"] for e in events.all("rated"))
    assert len(times) == 12
    assert most_in_a_window(times, 0.9) <= 5, times
    assert times[-1] - times[0] >= 2.0, times


def test_an_in_body_rate_spaces_the_entries_into_a_section(tasks, start_worker, events):
    """`with throttle(rate="2/s", key=...)`: five running bodies enter the
    section at most two a second."""
    start_worker(concurrency=5)
    results = [tasks.rated_section.delay(i) for i in range(5)]
    assert sorted(r.get(timeout=60) for r in results) == list(range(5))
    times = sorted(e["t"] for e in events.all("rated_section"))
    assert most_in_a_window(times, 0.9) <= 2, times
    assert times[-1] - times[0] >= 1.8, times


def test_heavy_task_routing(tasks, start_worker):
    """`@tasks.task(heavy=True)` goes to the heavy queue and only heavy workers take it."""
    general = start_worker(queues=["general"], concurrency=2)
    heavy = start_worker(queues=["heavy"], concurrency=1)
    heavy_pids = {r.get(timeout=30) for r in [tasks.heavy.delay(i) for i in range(4)]}
    assert heavy_pids == {heavy.pid}
    general_pids = {r.get(timeout=30)["pid"] for r in [tasks.where.delay(i) for i in range(4)]}
    assert general_pids == {general.pid}
