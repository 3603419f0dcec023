"""BrokerClient given several addresses: where each call goes (no broker, a fake call)."""

import time

import grpc
import pytest

from baton import _failover
from baton.client import BrokerClient


class Refused(grpc.RpcError):
    def __init__(self, details, trailing=()):
        self._details, self._trailing = details, tuple(trailing)

    def code(self):
        return grpc.StatusCode.UNAVAILABLE

    def details(self):
        return self._details

    def trailing_metadata(self):
        return self._trailing


DOWN = "failed to connect to all addresses; last error: UNAVAILABLE: Connection refused"


def standby(leader=None):
    trailing = [("baton-standby", "1")] + ([("baton-leader", leader)] if leader else [])
    return Refused("this broker is a standby", trailing)


def client(addresses, answers):
    """A client whose calls at address A answer ``answers[A]`` (an exception
    to raise, or a value), recording ``(address, wait_for_ready)`` per call."""
    c = BrokerClient(addresses, timeout=1.0)
    c._open = lambda address: (address, address)
    calls = []

    def invoke(channel, stub, ready):
        calls.append((stub, ready))
        answer = answers[stub]
        if isinstance(answer, BaseException):
            raise answer
        return answer

    return c, calls, invoke


def test_a_standby_sends_the_call_to_the_leader_and_it_stays_there():
    c, calls, invoke = client("a:1,b:2", {"a:1": standby("z:9"), "z:9": "ok"})
    assert c.call(invoke) == "ok"
    assert calls == [("a:1", False), ("z:9", False)]
    assert c.current == "z:9"
    calls.clear()
    assert c.call(invoke) == "ok"
    assert calls == [("z:9", False)]


def test_brokers_that_are_down_fail_the_call_after_one_round():
    last = Refused(DOWN)
    c, calls, invoke = client("a:1,b:2", {"a:1": Refused(DOWN), "b:2": last})
    with pytest.raises(grpc.RpcError) as raised:
        c.call(invoke)
    assert raised.value is last and calls == [("a:1", False), ("b:2", False)]
    assert c.current == "a:1"  # the next call starts a new round


def test_while_standbys_answer_the_call_goes_on_then_fails(monkeypatch):
    monkeypatch.setattr(_failover, "CLIENT_PATIENCE", 0.35)
    c, calls, invoke = client("a:1,b:2", {"a:1": standby(), "b:2": Refused(DOWN)})
    started = time.monotonic()
    with pytest.raises(grpc.RpcError):
        c.call(invoke)
    took = time.monotonic() - started
    assert 0.35 <= took < 2.0
    assert len(calls) >= 6 and {a for a, _ in calls} == {"a:1", "b:2"}


def test_other_failures_and_broken_calls_are_the_callers():
    broken = Refused("Socket closed")
    c, calls, invoke = client("a:1,b:2", {"a:1": broken})
    with pytest.raises(grpc.RpcError) as raised:
        c.call(invoke)
    assert raised.value is broken and calls == [("a:1", False)]


def test_one_broker_waits_for_ready():
    c, calls, invoke = client("a:1", {"a:1": "ok"})
    assert c.call(invoke) == "ok"
    assert calls == [("a:1", True)]


def test_an_empty_list_is_an_error():
    with pytest.raises(ValueError, match="empty address list"):
        BrokerClient(" , ", timeout=1.0)


def test_an_answer_that_is_an_error_still_ends_the_round():
    """b answered (INVALID_ARGUMENT): a later failure there starts a new round at a."""
    invalid = Refused("bad request")
    invalid.code = lambda: grpc.StatusCode.INVALID_ARGUMENT
    answers = {"a:1": Refused(DOWN), "b:2": invalid}
    c, calls, invoke = client("a:1,b:2", answers)
    with pytest.raises(grpc.RpcError):
        c.call(invoke)
    answers["b:2"], answers["a:1"] = Refused(DOWN), "ok"
    calls.clear()
    assert c.call(invoke) == "ok"
    assert calls == [("b:2", False), ("a:1", False)]
