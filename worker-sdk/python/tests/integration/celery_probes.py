"""Celery-style probe tasks for the retry budgets and errback shapes (served with --app celery_probes)."""

import json
import os
import time

from baton.celery import shared_task


def record(event, **fields):
    with open(os.environ["BATON_TEST_EVENTS"], "a", encoding="utf-8") as f:
        f.write(json.dumps({"event": event, "t": time.time(), **fields}) + "\n")


@shared_task(bind=True, max_retries=2, default_retry_delay=0.1)
def poll_forever(self, tag):
    record("poll", tag=tag, retries=self.request.retries, id=self.request.id)
    self.retry()


@shared_task(bind=True, max_retries=3)
def poll_then_give_up_with_exc(self, tag):
    record("poll", tag=tag, retries=self.request.retries)
    try:
        raise LookupError("volume vol-7 not found yet")
    except LookupError as exc:
        self.retry(exc=exc, countdown=0.1, max_retries=1)


@shared_task(bind=True, autoretry_for=(ConnectionError,), max_retries=2, default_retry_delay=0.1)
def flaky(self, tag):
    record("flaky", tag=tag, retries=self.request.retries)
    raise ConnectionError("backend is down")


@shared_task(bind=True, max_retries=5)
def not_retried(self, tag):
    record("not_retried", tag=tag, retries=self.request.retries, id=self.request.id)
    raise ValueError("bad size")


@shared_task(bind=True)
def celery_errback(self, failed_id, tag):
    failed = self.AsyncResult(failed_id)
    record("errback", tag=tag, failed_id=failed_id, state=failed.state, result=str(failed.result),
           result_type=type(failed.result).__name__, traceback=failed.traceback)


@shared_task
def baton_errback(failure, tag):
    record("baton_errback", tag=tag, failure=failure)


@shared_task
def add(x, y):
    return x + y


@shared_task
def done(result, tag):
    record("done", tag=tag, result=result)
