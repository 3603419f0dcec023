"""Client-chosen chain ids: UUIDv7, so the broker finds them among its newest entries."""

import os
import threading
import time
import uuid

import pytest

from baton.app import new_chain_id


def test_ids_are_uuid7_and_unique():
    ids = [new_chain_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    for value in ids[:100]:
        parsed = uuid.UUID(value)
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == value  # canonical form, as the broker stores it


def test_ids_carry_the_time_so_later_ones_sort_after():
    first = new_chain_id()
    time.sleep(0.002)
    later = new_chain_id()
    assert later > first
    ms = uuid.UUID(first).int >> 80
    assert abs(ms - time.time() * 1000) < 60_000


def _random_part(chain_id: str) -> int:
    return uuid.UUID(chain_id).int & ((1 << 62) - 1)


def test_threads_never_share_random_bits():
    ids: list[str] = []

    def make() -> None:
        ids.extend(new_chain_id() for _ in range(2_000))

    threads = [threading.Thread(target=make) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({_random_part(i) for i in ids}) == len(ids) == 8_000


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_hand_out_its_parents_ids():
    new_chain_id()  # the parent has random bits read ahead now
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.write(write_end, "\n".join(new_chain_id() for _ in range(5)).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        child = pipe.read().split("\n")
    os.waitpid(pid, 0)
    parent = [new_chain_id() for _ in range(5)]
    assert len(child) == 5
    assert not {_random_part(i) for i in child} & {_random_part(i) for i in parent}
