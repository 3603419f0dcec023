"""Several brokers, one leader: which address a client or worker tries next.

docs/deployment.md, "How clients find the leader"; the Rust SDK's
``baton::failover`` and the TypeScript SDK's ``failover.ts`` are the same
rule. Brokers sharing one PostgreSQL database elect a leader; the others
are standbys, which refuse every call with ``UNAVAILABLE``, the trailing
metadata ``baton-standby: 1`` and, when they know it, ``baton-leader:
HOST:PORT``. :class:`Brokers` is the rule as plain data (no sockets, no
clock), so that it is tested alone and the client and the worker share it:

1. Try the addresses in order, starting with the last one that worked.
2. On a connection failure or ``UNAVAILABLE``: if the answer carries
   ``baton-leader`` and that address was not tried in this round, try it
   next, at once (even if it is not in the list); else the next address of
   the list not tried in this round, at once.
3. When every address of the list was tried, the round ends: pause with the
   backoff, then start a new round. A round in which a standby answered
   pauses only the backoff's first step and does not grow it.
4. A success ends the round and resets the backoff.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Set

import grpc

LEADER_KEY = "baton-leader"
"""The metadata key of a standby's refusal that names the leader."""
STANDBY_KEY = "baton-standby"
"""The metadata key that marks a standby's refusal."""

CLIENT_PATIENCE = 30.0
"""How long a client's call keeps going round while standbys answer (rule 8)."""

STANDBY_PAUSE = 0.1
"""The pause after a round in which a standby answered: the backoff's first
step (0.1 s), not grown, since a standby takes over within its lease."""


def split_addrs(value: str, setting: str = "broker address") -> List[str]:
    """The addresses of a comma-separated list (``"h1:7070,h2:7070"``),
    trimmed, empty items dropped.

    Raises:
        ValueError: no address is left; the message names ``setting``.
    """
    addrs = [a.strip() for a in value.split(",")]
    addrs = [a for a in addrs if a]
    if not addrs:
        raise ValueError(f"{setting}: no broker address in {value!r} (an empty address list)")
    return addrs


@dataclass(frozen=True)
class Refusal:
    """What a failure said about where the leader is."""

    standby: bool = False
    """The refusal came from a standby (``baton-standby``)."""
    leader: Optional[str] = None
    """The leader's address (``baton-leader``), if the answer named one."""


NO_REFUSAL = Refusal()
"""A connection failure: no standby's marks."""


def refusal_of(err: BaseException) -> Refusal:
    """What ``err``'s trailing metadata says: a standby's marks, if any (a
    connection failure, or anything but a ``grpc.RpcError``, has none)."""
    trailing = getattr(err, "trailing_metadata", None)
    if not callable(trailing):
        return NO_REFUSAL
    try:
        pairs: Any = trailing()
    except Exception:  # an error object whose call never started
        return NO_REFUSAL
    standby = False
    leader: Optional[str] = None
    for key, value in pairs or ():
        if key == STANDBY_KEY:
            standby = True
        elif key == LEADER_KEY and leader is None:
            text = (value.decode() if isinstance(value, bytes) else str(value)).strip()
            leader = text or None
    return Refusal(standby=standby, leader=leader)


def code_of(err: BaseException) -> Optional[grpc.StatusCode]:
    """The status code of a ``grpc.RpcError`` (``None`` for another error)."""
    code = getattr(err, "code", None)
    if not callable(code):
        return None
    try:
        return code()
    except Exception:
        return None


_NOT_REACHED = ("failed to connect to all addresses", "DNS resolution failed", "Name resolution failure")
"""grpcio's words for a call that found no connection (it never reached a broker)."""


def elsewhere(err: BaseException) -> bool:
    """Whether a call that failed with ``err`` is worth making at another
    broker: a standby refused it (it did nothing), or its broker could not
    be reached. A connection that broke mid-call is not: the call may have
    been carried out."""
    if code_of(err) != grpc.StatusCode.UNAVAILABLE:
        return False
    if refusal_of(err).standby:
        return True
    details = getattr(err, "details", None)
    text = str(details() if callable(details) else "")
    return any(words in text for words in _NOT_REACHED)


@dataclass(frozen=True)
class Next:
    """What to do after a failure: try :attr:`Brokers.current` at once
    (``pause`` false), or pause first (the round ended; ``standby``: a
    standby answered in it, so pause the backoff's first step only)."""

    pause: bool
    standby: bool = False


NOW = Next(pause=False)


class Brokers:
    """The rotation over a list of broker addresses (see the module doc).

    Not thread-safe: callers that share one hold their own lock.
    """

    def __init__(self, addrs: Sequence[str]) -> None:
        """A rotation over ``addrs`` (as given, in order), starting at the first.

        Raises:
            ValueError: ``addrs`` is empty.
        """
        if not addrs:
            raise ValueError("no broker address (an empty address list)")
        self.list: List[str] = list(addrs)
        """The addresses as configured, in order; never empty."""
        self._current = self.list[0]
        self._tried: Set[str] = set()
        self._standby_seen = False

    @classmethod
    def parse(cls, value: str, setting: str = "broker address") -> "Brokers":
        """A rotation over a comma-separated list (see :func:`split_addrs`)."""
        return cls(split_addrs(value, setting))

    @property
    def current(self) -> str:
        """The address to try now: one of :attr:`list`, or a leader a standby named."""
        return self._current

    def succeeded(self) -> None:
        """The current address worked: it stays current, the round ends."""
        self._tried.clear()
        self._standby_seen = False

    def failed(self, refusal: Refusal = NO_REFUSAL) -> Next:
        """The current address failed to connect, or refused (``refusal``:
        what its answer said). Moves to the address to try next."""
        self._tried.add(self._current)
        self._standby_seen = self._standby_seen or refusal.standby
        if refusal.leader is not None and refusal.leader not in self._tried:
            self._current = refusal.leader
            return NOW
        for addr in self.list:
            if addr not in self._tried:
                self._current = addr
                return NOW
        standby = self._standby_seen
        self._standby_seen = False
        self._tried.clear()
        self._current = self.list[0]
        return Next(pause=True, standby=standby)
