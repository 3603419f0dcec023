"""The rule that picks the next broker address (baton._failover), alone."""

import grpc
import pytest

from baton._failover import NO_REFUSAL, Brokers, Next, Refusal, elsewhere, refusal_of, split_addrs


class FakeError(grpc.RpcError):
    def __init__(self, code, details="", trailing=()):
        self._code, self._details, self._trailing = code, details, tuple(trailing)

    def code(self):
        return self._code

    def details(self):
        return self._details

    def trailing_metadata(self):
        return self._trailing


def standby(leader=None):
    return Refusal(standby=True, leader=leader)


def test_lists_split_on_commas_and_ignore_blanks():
    assert split_addrs(" a:1, b:2 ,,") == ["a:1", "b:2"]
    with pytest.raises(ValueError, match="BATON_ADDR"):
        split_addrs(" , ", "BATON_ADDR")
    with pytest.raises(ValueError, match="empty address list"):
        Brokers([])


def test_down_brokers_are_skipped_and_a_round_ends_with_a_pause():
    b = Brokers.parse("a:1,b:2,c:3")
    assert b.current == "a:1"
    assert b.failed(NO_REFUSAL) == Next(pause=False)
    assert b.current == "b:2"
    assert b.failed() == Next(pause=False)
    assert b.current == "c:3"
    assert b.failed() == Next(pause=True, standby=False)
    assert b.current == "a:1"


def test_a_standby_sends_the_client_to_the_leader_even_outside_the_list():
    b = Brokers.parse("a:1,b:2")
    assert b.failed(standby("z:9")) == Next(pause=False)
    assert b.current == "z:9"
    b.succeeded()
    assert b.current == "z:9"
    # The leader dies: z refuses, then the list, where a standby still names
    # the dead leader (already tried): the round ends.
    assert b.failed() == Next(pause=False)
    assert b.current == "a:1"
    assert b.failed(standby("z:9")) == Next(pause=False)
    assert b.current == "b:2"
    assert b.failed(standby()) == Next(pause=True, standby=True)
    # A round of nothing but down brokers after it: a plain pause.
    assert b.failed() == Next(pause=False)
    assert b.failed() == Next(pause=True, standby=False)


def test_success_ends_the_round():
    b = Brokers.parse("a:1,b:2")
    assert b.failed() == Next(pause=False)
    b.succeeded()
    assert b.current == "b:2"
    assert b.failed() == Next(pause=False)
    assert b.current == "a:1"


def test_a_standbys_trailers_are_read():
    err = FakeError(grpc.StatusCode.UNAVAILABLE, "standby", [("baton-standby", "1"), ("baton-leader", " h:7 ")])
    assert refusal_of(err) == Refusal(standby=True, leader="h:7")
    assert refusal_of(FakeError(grpc.StatusCode.UNAVAILABLE, trailing=[("baton-standby", "1")])) == standby()
    assert refusal_of(FakeError(grpc.StatusCode.UNAVAILABLE, trailing=[("baton-leader", "")])) == NO_REFUSAL
    assert refusal_of(ValueError("x")) == NO_REFUSAL


def test_which_failures_move_to_another_address():
    unavailable = grpc.StatusCode.UNAVAILABLE
    assert elsewhere(FakeError(unavailable, trailing=[("baton-standby", "1")]))
    assert elsewhere(FakeError(unavailable, "failed to connect to all addresses; last error: ..."))
    assert elsewhere(FakeError(unavailable, "DNS resolution failed for nowhere:1"))
    # A connection that broke mid-call may have carried the call out.
    assert not elsewhere(FakeError(unavailable, "Socket closed"))
    assert not elsewhere(FakeError(grpc.StatusCode.INVALID_ARGUMENT, trailing=[("baton-standby", "1")]))
    assert not elsewhere(ValueError("x"))
