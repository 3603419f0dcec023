"""The completion records every benchmark task writes, and their reader.

A task body must cost the same in Baton and in Celery and must tell the
harness when it ran, without a result backend (Celery has none here) and
without asking the broker (which would load the system being measured). So
each body does one ``os.write`` of a fixed-size record to a file opened with
``O_APPEND``: appends of a few bytes are atomic on a local file system, so
the records of concurrent threads and processes never interleave, and the
harness learns how many tasks ran from the file's size alone.

A record is the task's index in its run, its role (which task of a chain it
is) and ``time.time()`` at the start of the body, which gives both the time
of the last completion (throughput) and submit-to-start latency.
"""

from __future__ import annotations

import os
import struct
import time
from typing import List, NamedTuple

RECORDS_ENV = "BENCH_RECORDS"
"""Names the record file; the harness sets it for the workers it starts."""

FORMAT = struct.Struct("<iid")  # index, role, time.time() at body start
SIZE = FORMAT.size

NOOP, SLOW, FAST, ON_SUCCESS, ON_FAILURE, CPU = range(6)
"""Roles: the single task, the two steps of a chain, the executor callbacks, and
the CPU-bound task."""

CPU_LOOP = 200_000
"""Iterations of :func:`spin`: about 10 ms of pure Python on the benchmark machine."""


def spin(n: int = CPU_LOOP) -> int:
    """A CPU-bound body: pure Python arithmetic that holds the GIL throughout."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total

_fd = -1


def record(index: int, role: int) -> None:
    """Append one record stamped now. The file is opened on first use, in the process
    that runs the task (after Celery's prefork; the warm-up pays for the open)."""
    global _fd
    now = time.time()
    if _fd < 0:
        _fd = os.open(os.environ[RECORDS_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(_fd, FORMAT.pack(index, role, now))


class Record(NamedTuple):
    index: int
    role: int
    time: float


def read(path: str, start: int, count: int) -> List[Record]:
    """The ``count`` records that follow the first ``start`` records of the file."""
    with open(path, "rb") as f:
        f.seek(start * SIZE)
        data = f.read(count * SIZE)
    return [Record(*fields) for fields in FORMAT.iter_unpack(data)]


def count(path: str) -> int:
    """How many complete records the file holds."""
    return os.stat(path).st_size // SIZE
