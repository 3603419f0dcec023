"""The default window follows the pace of the runs (``adapted_window``)."""

from baton.worker import AUTO_PREFETCH_MAX, WINDOW_WAIT, adapted_window, auto_prefetch


def test_short_runs_grow_the_window_to_what_the_worker_finishes_in_window_wait():
    # 5,000 runs/s: WINDOW_WAIT's worth is 100, under the ceiling of 31 x 4.
    assert adapted_window(28, 1250, 0.25, 4) == int(5000 * WINDOW_WAIT) == 100


def test_the_window_never_grows_past_31_per_slot_nor_past_the_cap():
    assert adapted_window(14, 100_000, 0.25, 2) == 62
    assert adapted_window(70, 100_000, 0.25, 10) == AUTO_PREFETCH_MAX
    # A floor above the cap wins: a worker of 100 slots keeps 7 x 100.
    assert adapted_window(700, 100_000, 0.25, 100) == 700


def test_longer_runs_bring_it_back_to_its_floor_and_never_below():
    floor = auto_prefetch(2, ["general"])
    assert floor == 14
    assert adapted_window(62, 5, 0.25, 2) == floor  # 20 runs/s: 0.4 runs in WINDOW_WAIT
    assert adapted_window(62, 0, 0.25, 2) == floor  # nothing to run
    assert adapted_window(14, 0, 0.25, 2) == 14


def test_a_steady_pace_keeps_the_window_it_has():
    # Within a quarter of the current window: no change, so no Window message.
    assert adapted_window(100, 1400, 0.25, 4) == 100  # target 112
    assert adapted_window(100, 1100, 0.25, 4) == 100  # target 88
    assert adapted_window(90, 1700, 0.25, 4) == 124  # target 136, capped at 31 x 4
    assert adapted_window(100, 900, 0.25, 4) == 72  # target 72


def test_a_period_of_no_length_changes_nothing_but_the_floor():
    assert adapted_window(14, 10, 0.0, 2) == 14
