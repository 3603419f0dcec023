"""The seed's examples (tasks-and-executors.rst) with only their import lines changed.

Python 3's ``print(...)`` and a short sleep (the seed sleeps 50 s); the
rest is the seed's code as written. Served by ``python -m baton worker
--app seed_celery``.
"""

import time  # the seed uses it without showing the import

from baton.celery import shared_task, chain  # was: from celery import shared_task, chain
from baton.celery import throttle  # was: from nodeconductor.core.tasks import throttle
from nc_models import key_by_uuid  # the seed's helper, left out of the seed


@shared_task(name='nodeconductor.demo')
def demo(uuid):
    """ This whole task will be partialy throttled by it's "slow/dangerous" part. """
    chain(
        slow.si(uuid),
        fast.si(uuid),
    )()


@shared_task
def slow(uuid):
    # Run only one task at a time
    # It will be throttled based on task name and key pair
    throttle_key = key_by_uuid(uuid)
    with throttle(concurrency=1, key=throttle_key):
        print('** Start %s' % uuid)
        time.sleep(1)
        print('** End %s' % uuid)


@shared_task
def fast(uuid):
    print('** Fast %s' % uuid)


@shared_task
@throttle
def dangerous(uuid=0):
    # Allow only one instane of "dangerous" task at a time
    # Default throttle concurrency is 1
    print('** Dangerous %s' % uuid)


# Place task into a separate queue for heavy tasks
@shared_task(is_heavy_task=True)
def heavy(uuid=0):
    print('** Heavy %s' % uuid)
