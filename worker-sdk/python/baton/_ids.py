"""Chain ids chosen by the client: UUIDv7 (RFC 9562).

Why UUIDv7 and not ``uuid4``: the broker checks that a client-chosen id is
not taken, and its store keeps chains in id order. Time-ordered ids are
looked up among the newest entries, which stay in the store's cache; random
ones each land on a random page, which once the store outgrows its cache is
a read from disk per submission.

The random bits come from the operating system (``os.urandom``), so ids stay
unguessable, but 4 KiB at a time: one system call per id cost more than the
rest of the id, and in a submission loop it also let the pipeline's thread
take the GIL at every call (each system call releases it), which then had to
be won back. A forked child starts with a fresh buffer, or it would hand out
its parent's ids again.
"""

from __future__ import annotations

import os
import threading
import time

_ID_BYTES = 10
"""Random bytes per id: 74 of their 80 bits are used."""

_BUFFER_BYTES = 4096


class _RandomBytes:
    """OS randomness read ahead in blocks, handed out in slices (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buffer = b""
        self._pos = 0

    def take(self, n: int) -> bytes:
        with self._lock:
            if self._pos + n > len(self._buffer):
                self._buffer = os.urandom(_BUFFER_BYTES)
                self._pos = 0
            start = self._pos
            self._pos = start + n
            return self._buffer[start : start + n]

    def forget(self) -> None:
        """Drop what was read ahead (in a forked child: it is the parent's too)."""
        self._lock = threading.Lock()
        self._buffer = b""
        self._pos = 0


_random = _RandomBytes()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_random.forget)


def new_chain_id() -> str:
    """A fresh chain id: the unix time in milliseconds followed by 74 random bits,
    in the canonical (lower-case, hyphenated) form the broker stores."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(_random.take(_ID_BYTES), "big")
    value = (
        (ms & 0xFFFF_FFFF_FFFF) << 80  # unix_ts_ms
        | 0x7 << 76  # version
        | (rand >> 68) << 64  # rand_a: 12 bits
        | 0b10 << 62  # variant
        | (rand & ((1 << 62) - 1))  # rand_b: 62 bits
    )
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
