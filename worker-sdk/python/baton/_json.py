"""JSON text for arguments and results, as the protocol carries them.

Beyond plain JSON, values Celery's default serializer also accepted are
turned into strings (UUID, datetime, date, time, Decimal), so NodeConductor
code passing a ``uuid.UUID`` keeps working. They arrive as strings, as they
did through Celery's JSON serializer.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import json
import uuid
from typing import Any


def _default(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


_encoder = json.JSONEncoder(
    default=_default, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)
"""One encoder for every call: ``json.dumps`` with options builds a new one each time,
and arguments and results are encoded once per step and per run. NaN and the
infinities are refused (Python would write ``NaN``, which is not JSON: the broker
refuses such an outcome, and the run would never end)."""


def dumps(value: Any, what: str) -> str:
    """Encode ``value``; ``what`` names it in the error (``"args of demo.slow"``)."""
    try:
        return _encoder.encode(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{what}: {exc}") from exc


def loads(text: str, default: Any = None) -> Any:
    """Decode JSON text; the protocol's empty string stands for ``default``.

    ``[]`` and ``{}``, the arguments of most task runs, skip the decoder
    (about a microsecond each, paid per run by the worker).
    """
    if not text:
        return default
    if text == "[]":
        return []
    if text == "{}":
        return {}
    return json.loads(text)
