"""The worker's thread pool: every run's outcome comes back to the session loop, once."""

import asyncio
import threading

from baton.context import TaskContext
from baton.worker import _Pool, _Run


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
