"""`throttle` as a decorator and as a declaration; in-body use needs a worker's run."""

import pytest

from baton import Throttle, pb, throttle
from baton.throttle import declared_on


def test_bare_decorator_marks_concurrency_one_and_returns_the_function():
    def f():
        return 1

    assert throttle(f) is f
    assert declared_on(f) == Throttle(concurrency=1)
    assert f() == 1


def test_decorator_with_arguments():
    @throttle(concurrency=2, key="k")
    def f():
        pass

    assert declared_on(f) == Throttle(concurrency=2, key="k")


def test_to_pb():
    assert throttle(concurrency=3, key="tenant:1", shared=True, scope="chain").to_pb() == pb.Throttle(
        concurrency=3, key="tenant:1", shared=True, scope=pb.THROTTLE_SCOPE_CHAIN
    )
    assert throttle().to_pb() == pb.Throttle(concurrency=1, scope=pb.THROTTLE_SCOPE_TASK)


@pytest.mark.parametrize(
    "kwargs",
    [dict(concurrency=0), dict(concurrency=True), dict(scope="forever"), dict(shared=True), dict(key=5)],
)
def test_bad_declarations(kwargs):
    with pytest.raises((ValueError, TypeError)):
        throttle(**kwargs)


def test_in_body_outside_a_task_is_an_error():
    with pytest.raises(RuntimeError, match="outside a task"):
        with throttle(concurrency=1, key="k"):
            pass


class FakeSlots:
    """Stands in for the worker: records the protocol calls."""

    def __init__(self):
        self.calls = []
        self.next = 0

    def acquire_blocking(self, run, t):
        self.next += 1
        self.calls.append(("acquire", run, t.key, self.next))
        return self.next

    async def acquire_async(self, run, t):
        return self.acquire_blocking(run, t)

    def release(self, run, rid):
        self.calls.append(("release", run, rid))


def _ctx(slots, task_id="T"):
    from baton import TaskContext

    return TaskContext(name="n", task_id=task_id, attempt=1, chain_id="c", phase="main", step_index=0,
                       queue="general", context={}, _slots=slots)


def test_in_body_acquires_then_releases_even_on_error_and_nests():
    from baton.context import enter, leave

    slots = FakeSlots()
    token = enter(_ctx(slots))
    try:
        t = throttle(concurrency=1, key="vm:1")
        with pytest.raises(ZeroDivisionError):
            with t:
                with t:  # nested use of one object releases in LIFO order
                    1 / 0
    finally:
        leave(token)
    assert slots.calls == [
        ("acquire", ("T", 1), "vm:1", 1),
        ("acquire", ("T", 1), "vm:1", 2),
        ("release", ("T", 1), 2),
        ("release", ("T", 1), 1),
    ]


def test_async_with():
    import asyncio

    from baton.context import enter

    slots = FakeSlots()

    async def body():
        enter(_ctx(slots))
        async with throttle(key="k"):
            pass

    asyncio.run(body())
    assert [c[0] for c in slots.calls] == ["acquire", "release"]
