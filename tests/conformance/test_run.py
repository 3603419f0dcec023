"""Unit tests of the runner's judging (no broker): run.sh runs them first, so
a check that could never fail does not go unnoticed.

    worker-sdk/python/.venv/bin/python -m pytest -q tests/conformance/test_run.py
"""

from __future__ import annotations

from typing import Any, Dict, List

import run
from baton import pb


def test_matches_placeholders_and_shapes() -> None:
    assert run.matches({"a": [1, "nonempty"]}, {"a": [1, "x"], "b": 2}, "c")
    assert not run.matches({"a": [1, "nonempty"]}, {"a": [1, ""]}, "c")
    assert not run.matches([1, 2], [1, 2, 3], "c")
    assert run.matches("$chain_id", "c", "c") and not run.matches("$chain_id", "d", "c")
    assert run.matches({"$contains": "longer than"}, "key is longer than 200", "c")
    assert not run.matches({"$contains": "longer than"}, None, "c")
    assert run.matches({"$not": "RUNNING"}, "FAILED", "c") and not run.matches({"$not": "RUNNING"}, "RUNNING", "c")
    assert not run.matches(1, True, "c") and run.matches(5, 5.0, "c")


def test_holders_count_overlaps_and_let_a_leave_go_first() -> None:
    def line(event: str, t: int) -> Dict[str, Any]:
        return {"event": event, "t_us": t}

    one_at_a_time = [line("enter", 1), line("leave", 5), line("enter", 5), line("leave", 9)]
    assert run.holders(one_at_a_time) == 1
    overlapping = [line("enter", 1), line("enter", 4), line("leave", 5), line("leave", 9)]
    assert run.holders(overlapping) == 2


def test_rate_limited_starts_must_be_spread() -> None:
    def enters(*ms: int) -> List[Dict[str, Any]]:
        return [{"event": "enter", "t_us": t * 1000} for t in ms]

    assert run.start_spacing(enters(0, 250, 500, 750, 1000, 1250), 900, 4, 1150) == []
    bunched = run.start_spacing(enters(0, 10, 20, 30, 40, 50), 900, 4, 1150)
    assert bunched == ["6 starts within 900 ms, at most 4 allowed", "the starts span 50 ms, at least 1150 expected"]


def test_events_are_matched_in_order() -> None:
    got = ["snapshot", "step_started", "step_failed", "chain_failed"]
    assert run.subsequence(["step_started", "chain_failed"], got)
    assert not run.subsequence(["chain_failed", "step_started"], got)


def test_a_step_is_judged_from_what_the_broker_recorded() -> None:
    step = pb.Step(state=pb.STEP_STATE_SUCCEEDED, attempts=2, result="13", worker="conformance-go", queue="general")
    problems: List[str] = []
    run.check_step("s", {"state": "SUCCEEDED", "attempts": 2, "result": 13, "worker_sdk": "go"}, step, "c", problems)
    assert problems == []
    run.check_step("s", {"attempts": 1, "result": 14, "worker_sdk": "rust", "queue": "heavy"}, step, "c", problems)
    assert len(problems) == 4, problems


def test_known_failures_must_fail_as_listed() -> None:
    entry = {"why": "w", "problems": ["'error_type': 'ThrottleError'"]}
    listed = run.Verdict(False, ["failure: ... 'error_type': 'ThrottleError' ..."], 0.0)
    listed.expect(entry)
    assert listed.cell == "known failure" and not listed.counts_as_failure
    other = run.Verdict(False, ["chain did not end within 60 s"], 0.0)
    other.expect(entry)
    assert other.cell == "**FAIL**" and other.counts_as_failure
    fixed = run.Verdict(True, [], 0.0)
    fixed.expect(entry)
    assert fixed.counts_as_failure
    plain = run.Verdict(True, [], 0.0)
    plain.expect(None)
    assert plain.cell == "pass" and not plain.counts_as_failure
