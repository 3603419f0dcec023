"""Baton's Python SDK: Celery-style tasks, chains and throttles on the Baton broker.

::

    from baton import Baton, chain, throttle

    app = Baton("127.0.0.1:7070")

    @app.task(name="demo.slow", max_retries=3)
    def slow(uuid):
        with throttle(concurrency=1, key=f"vm:{uuid}"):
            ...

    chain(slow.si(10), fast.si(10)).delay().get(timeout=30)

Workers: ``app.worker(queues=["general"], concurrency=4).run()`` or
``python -m baton worker --app mymodule:app``. Everything speaks the
``baton.v1`` gRPC protocol (:mod:`baton.pb`); routing, throttles, retries and
leases are the broker's.

Importing this package has no side effect beyond loading the protocol
definitions: no connection, thread or signal handler is created until used.
"""

from ._transport import Tls
from .app import Baton, Task
from .canvas import Chain, Group, Nested, Signature, chain, chord, group, nested
from .client import AsyncResult
from .context import TaskContext, current_task
from .errors import (
    BatonError,
    Cancelled,
    ChainCancelled,
    ChainFailed,
    Fatal,
    PartialSubmission,
    Retry,
    SubmissionRefused,
    ThrottleError,
    ThrottleRefused,
    WorkerConfigError,
)
from .throttle import Throttle, throttle
from .worker import Worker

__all__ = [
    "AsyncResult",
    "Baton",
    "BatonError",
    "Cancelled",
    "Chain",
    "ChainCancelled",
    "ChainFailed",
    "Fatal",
    "Group",
    "Nested",
    "PartialSubmission",
    "Retry",
    "Signature",
    "SubmissionRefused",
    "Task",
    "TaskContext",
    "Throttle",
    "ThrottleError",
    "ThrottleRefused",
    "Tls",
    "Worker",
    "WorkerConfigError",
    "chain",
    "chord",
    "current_task",
    "group",
    "nested",
    "throttle",
]

__version__ = "0.1.0"
