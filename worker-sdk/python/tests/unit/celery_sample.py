"""Celery-style tasks only (no Baton app attribute), for ``--app celery_sample`` in the unit tests."""

from baton.celery import shared_task


@shared_task(name="sample.celery.echo")
def echo(x):
    return x
