"""Execution options: Celery-style keyword arguments to ``baton.v1.Options``.

Options are written the Python way (seconds, datetimes, ``throttle=1``) on
``@app.task(...)``, ``.set(...)`` and ``.apply_async(...)``, and converted
here, in one place, to the protocol's milliseconds and messages. Only the
translation lives here; what the options *mean* (routing, backoff, budgets)
is decided by the broker.

=====================  =========================================================
option                 meaning (``baton.v1.Options`` field)
=====================  =========================================================
``queue``              explicit queue name (``queue``)
``heavy``              route to the ``heavy`` queue (``heavy``)
``throttle``           declared throttle: ``True``/``1``/``n`` (concurrency) or a
                       ``throttle(...)`` object (``throttle``)
``rate``               at most that many starts per period for the task name (or
                       the throttle's identity), ``"10/s"``, ``"100/m"``
                       (``throttle.rate``); global, across workers
``max_retries``        retries of retryable failures, default 0 (``max_retries``)
``retry_backoff``      first retry delay, seconds (``retry_backoff_ms``)
``retry_backoff_max``  longest retry delay, seconds (``retry_backoff_max_ms``)
``max_polls``          budget of ``Retry`` outcomes, default 100 (``max_polls``)
``time_limit``         time limit of one run, seconds (``timeout_ms``)
``countdown``          delay once the step's turn comes, seconds (``countdown_ms``)
``eta``                not before this ``datetime`` (``eta_unix_ms``)
``priority``           higher first within a queue (``priority``)
``description``        free text shown in inspection (``description``)
=====================  =========================================================
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Mapping, Optional

from . import pb
from .errors import to_ms
from .throttle import Throttle

OPTION_NAMES = frozenset(
    {
        "queue",
        "heavy",
        "throttle",
        "rate",
        "max_retries",
        "retry_backoff",
        "retry_backoff_max",
        "max_polls",
        "time_limit",
        "countdown",
        "eta",
        "priority",
        "description",
    }
)


def check(options: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Return ``options`` as a dict after refusing unknown names.

    A misspelt option (``countdwon=5``) must fail loudly at the call site,
    not be dropped on the way to the broker.
    """
    unknown = sorted(set(options) - OPTION_NAMES)
    if unknown:
        raise TypeError(
            f"{where}: unknown option(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(OPTION_NAMES))}"
        )
    return dict(options)


def as_throttle(value: Any) -> Optional[Throttle]:
    """Normalize a ``throttle=`` option: ``True``, a concurrency, or a Throttle."""
    if value is None or value is False:
        return None
    if value is True:
        return Throttle()
    if isinstance(value, Throttle):
        return value
    if isinstance(value, int):
        return Throttle(concurrency=value)
    raise TypeError(f"throttle= takes True, an int or throttle(...), not {type(value).__name__}")


# Options given in seconds and the Options field (milliseconds) each sets.
_DURATIONS = (
    ("retry_backoff", "retry_backoff_ms"),
    ("retry_backoff_max", "retry_backoff_max_ms"),
    ("time_limit", "timeout_ms"),
    ("countdown", "countdown_ms"),
)


def _uint(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative int (got {value!r})")
    return value


def to_pb(options: Mapping[str, Any]) -> pb.Options:
    """Convert checked options to ``baton.v1.Options``; ``None`` values stay unset."""
    out = pb.Options()
    get = options.get
    if get("queue"):
        out.queue = str(get("queue"))
    if get("heavy"):
        out.heavy = True
    spec = as_throttle(get("throttle"))
    rate = get("rate")
    if rate is not None:
        spec = Throttle(rate=rate) if spec is None else spec.with_rate(rate, spec.burst)
    if spec is not None:
        out.throttle.CopyFrom(spec.to_pb())
    if get("max_retries") is not None:
        out.max_retries = _uint(get("max_retries"), "max_retries")
    for name, field in _DURATIONS:
        value = get(name)
        if value is not None:
            setattr(out, field, to_ms(value, name))
    if get("max_polls") is not None:
        out.max_polls = _uint(get("max_polls"), "max_polls")
    eta = get("eta")
    if eta is not None:
        if not isinstance(eta, datetime):
            raise TypeError(f"eta must be a datetime (got {type(eta).__name__})")
        # A naive datetime is local time, as everywhere in Python's datetime.
        out.eta_unix_ms = max(0, int(round(eta.timestamp() * 1000)))
    if get("priority") is not None:
        priority = get("priority")
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise ValueError(f"priority must be an int (got {priority!r})")
        out.priority = priority
    if get("description"):
        out.description = str(get("description"))
    return out
