"""Client-chosen chain ids: UUIDv7, so the broker finds them among its newest entries."""

import time
import uuid

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
