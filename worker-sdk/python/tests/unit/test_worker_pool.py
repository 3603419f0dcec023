"""The worker's thread pool: every run's outcome comes back to the session loop, once."""

import asyncio
import threading

import pytest

from baton.context import TaskContext
from baton.worker import _Pool, _Run


class Outcomes:
    """The outcomes a pool hands back, by task id; made on the loop."""

    def __init__(self):
        self.done = {}
        self._back = asyncio.Event()

    def on_done(self, run, outcome):
        self.done[run.key[0]] = outcome
        self._back.set()

    async def until(self, ready):
        """Until ``ready(done)`` holds (10 s at most between outcomes)."""
        while not ready(self.done):
            self._back.clear()
            await asyncio.wait_for(self._back.wait(), 10)


def make_run(i):
    ctx = TaskContext(name="t.x", task_id=f"t{i}", attempt=1, chain_id="c", phase="main", step_index=0,
                      queue="general", context={})
    return _Run(ctx.key, ctx)


def test_every_outcome_is_handed_back_on_the_loop_once():
    async def main():
        loop = asyncio.get_running_loop()
        done = {}
        all_back = asyncio.Event()

        def on_done(run, outcome):
            assert threading.current_thread() is threading.main_thread()
            assert run.key not in done
            done[run.key] = outcome
            if len(done) == 2000:
                all_back.set()

        pool = _Pool(4, loop, on_done)
        runs = [make_run(i) for i in range(2000)]
        for i, run in enumerate(runs):
            pool.submit(run, lambda i=i: i * 2, [], {})
        await asyncio.wait_for(all_back.wait(), 30)
        pool.shutdown(wait=True)
        return runs, done

    runs, done = asyncio.run(main())
    assert [done[r.key].success.result for r in runs] == [str(i * 2) for i in range(2000)]


def test_a_raising_body_is_reported_as_its_failure():
    async def main():
        loop = asyncio.get_running_loop()
        back = loop.create_future()
        pool = _Pool(1, loop, lambda run, outcome: back.set_result(outcome))

        def body():
            raise KeyError("missing")

        pool.submit(make_run(0), body, [], {})
        outcome = await asyncio.wait_for(back, 10)
        pool.shutdown(wait=True)
        return outcome

    failure = asyncio.run(main()).failure
    assert (failure.error_type, failure.retryable) == ("KeyError", True)


def test_a_job_left_to_a_busy_thread_gets_an_idle_one_if_that_body_blocks():
    """A short function's job waits for an awake thread rather than waking one;
    when that thread's body turns out to block, an idle thread takes the job."""

    async def main():
        loop = asyncio.get_running_loop()
        done = {}
        back = asyncio.Event()

        def on_done(run, outcome):
            done[run.key[0]] = (outcome, threading.current_thread())
            back.set()

        pool = _Pool(4, loop, on_done)
        release = threading.Event()
        threads = []

        def usually_short(block=False):
            threads.append(threading.current_thread().name)
            if block:
                release.wait(30)
            return "ok"

        # Learn that usually_short is short.
        pool.submit(make_run(0), usually_short, [], {})
        while "t0" not in done:
            back.clear()
            await asyncio.wait_for(back.wait(), 10)
        # This run blocks its thread; the next one must not wait for it.
        pool.submit(make_run(1), usually_short, [True], {})
        pool.submit(make_run(2), usually_short, [], {})
        while "t2" not in done:
            back.clear()
            await asyncio.wait_for(back.wait(), 10)
        assert "t1" not in done
        release.set()
        while "t1" not in done:
            back.clear()
            await asyncio.wait_for(back.wait(), 10)
        pool.shutdown(wait=True)
        return done, threads

    done, threads = asyncio.run(main())
    assert all(outcome.success.result == '"ok"' for outcome, _ in done.values())
    assert threads[1] != threads[2]  # t2 ran beside the blocked t1


def test_a_long_body_does_not_make_short_jobs_wait_for_its_thread():
    """While a thread runs a body that is not known to be short, a short job
    wakes an idle thread at once instead of waiting for the spare timer."""

    async def main():
        outcomes = Outcomes()

        async def until(task_id):
            await outcomes.until(lambda done: task_id in done)

        pool = _Pool(4, asyncio.get_running_loop(), outcomes.on_done)
        started, release = threading.Event(), threading.Event()

        def long_body():
            started.set()
            release.wait(30)

        def short_body():
            return "ok"

        pool.submit(make_run(0), short_body, [], {})
        await until("t0")  # short_body is known short now
        pool.submit(make_run(1), long_body, [], {})
        assert started.wait(10)
        pool.submit(make_run(2), short_body, [], {})
        deferred = pool._spare_timer is not None
        await until("t2")
        release.set()
        await until("t1")
        pool.shutdown(wait=True)
        return deferred

    assert asyncio.run(main()) is False


def test_jobs_beyond_the_threads_wait_in_order_and_a_queued_one_can_be_withdrawn():
    """The pool takes more jobs than it has threads (a worker's prefetched
    runs): they wait, never more than ``size`` run at once, the first ones
    submitted start first, and a job no thread took yet can be withdrawn, so
    that it never starts. (The order of every start is checked with one
    thread, in tests/integration/test_prefetch.py.)"""

    async def main():
        outcomes = Outcomes()
        pool = _Pool(2, asyncio.get_running_loop(), outcomes.on_done)
        lock = threading.Lock()
        running, most, started = [0], [0], []
        release = threading.Event()

        def body(i):
            with lock:
                started.append(i)
                running[0] += 1
                most[0] = max(most[0], running[0])
            release.wait(30)
            with lock:
                running[0] -= 1
            return i

        runs = [make_run(i) for i in range(6)]
        for i, run in enumerate(runs):
            pool.submit(run, body, [i], {})
        while len(started) < 2:  # both threads hold a job; the other four wait
            await asyncio.sleep(0.01)
        assert not pool.withdraw(runs[0]), "a started job cannot be withdrawn"
        assert pool.withdraw(runs[3])
        assert not pool.withdraw(runs[3]), "withdrawn once"
        release.set()
        await outcomes.until(lambda done: len(done) == 5)
        pool.shutdown(wait=True)
        return outcomes.done, most[0], started

    done, most, started = asyncio.run(main())
    assert sorted(done) == ["t0", "t1", "t2", "t4", "t5"], "the withdrawn job never ran"
    assert sorted(started[:2]) == [0, 1], "the first jobs submitted start first"
    assert sorted(started[2:]) == [2, 4, 5]
    assert most == 2


def test_threads_busy_with_a_backlog_of_short_jobs_wake_no_others(monkeypatch):
    """A backlog of short jobs (a prefetching worker's) is left to the thread
    that is awake while it keeps taking them: waking the idle threads would
    only make them contend for the GIL. Once a whole SPARE_DELAY passes with
    no job taken (a body that stalls after all), the idle threads wake for
    the jobs still queued. The spare timer is driven by hand here: on a busy
    machine a real one could see a stall that the test did not make."""
    monkeypatch.setattr("baton.worker.SPARE_DELAY", 3600)

    async def main():
        outcomes = Outcomes()
        pool = _Pool(4, asyncio.get_running_loop(), outcomes.on_done)
        permits = threading.Semaphore(0)
        entered = [0]

        def short(wait):
            entered[0] += 1
            if wait:
                permits.acquire()

        async def until_entered(n):
            while entered[0] < n:
                await asyncio.sleep(0.001)

        async def until_all_asleep():
            # A thread sleeps once it finds no job; on a busy machine that can
            # come late, and a thread still awake takes jobs without a wake-up.
            while len(pool._sleeping) < 4:
                await asyncio.sleep(0.001)

        await until_all_asleep()
        pool.submit(make_run(0), short, [False], {})
        await outcomes.until(lambda done: len(done) == 1)
        # Known short: set by hand, as a loaded machine can stretch one
        # no-op run past SHORT_RUN.
        pool._last_run[short] = 0.0
        await until_all_asleep()
        for i in range(1, 11):
            pool.submit(make_run(i), short, [True], {})
        await until_entered(1)  # one thread woke and holds job 1; nine jobs wait
        assert len(pool._sleeping) == 3
        pool._spare_timer.cancel()
        pool._arm_spare_timer()  # the mark: jobs taken so far

        permits.release()  # job 1 returns; the awake thread takes job 2
        await until_entered(2)
        pool._wake_spares()  # a job was taken since the mark: nobody wakes
        assert len(pool._sleeping) == 3, "threads woke while the awake one kept taking jobs"
        pool._wake_spares()  # none taken since: the idle threads wake for the queue
        assert len(pool._sleeping) == 0
        await until_entered(5)  # each of them took a job

        for _ in range(10):
            permits.release()
        await outcomes.until(lambda done: len(done) == 11)
        pool.shutdown(wait=True)

    asyncio.run(main())


def test_the_default_window_is_seven_per_slot_and_none_on_the_heavy_queue():
    from baton import Baton
    from baton.worker import Worker

    app = Baton("127.0.0.1:1")
    app.task(name="t.x")(lambda: None)
    assert Worker(app, concurrency=3).prefetch == 21
    assert Worker(app, concurrency=3, queues=["general", "heavy"]).prefetch == 0
    assert Worker(app, concurrency=3, prefetch=0).prefetch == 0
    assert Worker(app, concurrency=3, prefetch=5).prefetch == 5
    with pytest.raises(ValueError):
        Worker(app, pool="prefork")
