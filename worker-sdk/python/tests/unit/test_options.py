"""Python-style options map onto baton.v1.Options (seconds to milliseconds, unset stays unset)."""

from datetime import datetime, timedelta, timezone

import pytest

from baton import options, pb, throttle


def test_every_option_maps_to_its_field():
    eta = datetime(2031, 5, 6, 7, 8, 9, tzinfo=timezone.utc)
    out = options.to_pb(
        dict(
            queue="q1",
            heavy=True,
            throttle=2,
            max_retries=3,
            retry_backoff=1.5,
            retry_backoff_max=timedelta(minutes=1),
            max_polls=300,
            time_limit=10,
            countdown=0.25,
            eta=eta,
            priority=-2,
            description="create volume",
        )
    )
    assert out == pb.Options(
        queue="q1",
        heavy=True,
        throttle=pb.Throttle(concurrency=2, scope=pb.THROTTLE_SCOPE_TASK),
        max_retries=3,
        retry_backoff_ms=1500,
        retry_backoff_max_ms=60000,
        max_polls=300,
        timeout_ms=10000,
        countdown_ms=250,
        eta_unix_ms=int(eta.timestamp() * 1000),
        priority=-2,
        description="create volume",
    )


def test_unset_optionals_stay_unset_so_the_broker_defaults_apply():
    out = options.to_pb({})
    for field in ("max_retries", "retry_backoff_ms", "retry_backoff_max_ms", "max_polls", "timeout_ms"):
        assert not out.HasField(field)
    assert not out.HasField("throttle")
    # but an explicit 0 is sent: "do not retry" differs from "use the default"
    assert options.to_pb({"max_retries": 0}).HasField("max_retries")


@pytest.mark.parametrize(
    "value, expected",
    [(True, 1), (1, 1), (3, 3)],
)
def test_throttle_shorthands(value, expected):
    assert options.to_pb({"throttle": value}).throttle.concurrency == expected


def test_throttle_off():
    for value in (None, False):
        assert not options.to_pb({"throttle": value}).HasField("throttle")


def test_throttle_object():
    out = options.to_pb({"throttle": throttle(concurrency=2, key="k")})
    assert out.throttle == pb.Throttle(concurrency=2, key="k", scope=pb.THROTTLE_SCOPE_TASK)


@pytest.mark.parametrize(
    "bad",
    [{"countdown": -1}, {"max_retries": -1}, {"max_retries": 1.5}, {"priority": "high"}, {"throttle": 0}],
)
def test_bad_values_are_refused(bad):
    with pytest.raises((ValueError, TypeError)):
        options.to_pb(bad)


def test_eta_must_be_a_datetime():
    with pytest.raises(TypeError):
        options.to_pb({"eta": 12345})


def test_unknown_names_are_listed():
    with pytest.raises(TypeError, match="bogus"):
        options.check({"bogus": 1, "queue": "x"}, "here")


def test_a_rate_alone_limits_no_holders_and_carries_its_period():
    out = options.to_pb({"rate": "10/s"}).throttle
    assert (out.concurrency, out.rate.count, out.rate.period_ms, out.rate.burst) == (0, 10, 1000, 1)
    out = throttle(rate="3/10s", burst=2, key="api", shared=True).to_pb()
    assert (out.concurrency, out.key, out.shared) == (0, "api", True)
    assert (out.rate.count, out.rate.period_ms, out.rate.burst) == (3, 10_000, 2)


def test_a_rate_joins_a_declared_throttle():
    out = options.to_pb({"throttle": 2, "rate": "100/m"}).throttle
    assert (out.concurrency, out.rate.count, out.rate.period_ms) == (2, 100, 60_000)


@pytest.mark.parametrize(
    "rate, says",
    [
        ("10", "expected COUNT/PERIOD"),
        ("0/s", "the count is 0"),
        ("10/x", "is not a unit"),
        ("10/2d", "between 1 ms and a day"),
    ],
)
def test_bad_rates_say_what_is_wrong(rate, says):
    with pytest.raises(ValueError, match=says):
        options.to_pb({"rate": rate})


def test_a_burst_needs_a_rate_and_fits_in_its_count():
    with pytest.raises(ValueError, match="burst needs a rate"):
        throttle(burst=2)
    with pytest.raises(ValueError, match="more than the rate's count"):
        throttle(rate="2/s", burst=3)
