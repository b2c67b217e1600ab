from __future__ import annotations

from domain.backend_health import BackendHealth, HealthEvent, Report


def test_one_report_per_state_change_and_one_summary_per_period_while_down() -> None:
    health = BackendHealth(summary_every=60.0)
    assert health.succeeded(0.0) is None  # up from the start: nothing to say
    assert health.failed(0.0, "timed out") == Report(HealthEvent.WENT_DOWN, 1, "timed out")
    assert [health.failed(t, "timed out") for t in range(1, 60)] == [None] * 59
    assert health.failed(60.0, "ConnectionError") == Report(
        HealthEvent.STILL_DOWN, 60, "ConnectionError"
    )
    assert health.failed(61.0, "timed out") is None
    assert health.failed(120.0, "timed out") == Report(HealthEvent.STILL_DOWN, 2, "timed out")
    assert health.succeeded(130.0) == Report(HealthEvent.CAME_BACK, 63, "")
    assert health.succeeded(131.0) is None
    assert health.failed(500.0, "timed out") == Report(HealthEvent.WENT_DOWN, 1, "timed out")


def test_a_backend_that_flaps_is_summarised_not_reported_per_failed_call() -> None:
    """A busy host: every other call times out. Two lines for the first outage, then one
    summary a period, where each failed call would otherwise write two."""
    health = BackendHealth(summary_every=60.0)
    assert health.failed(0.0, "timed out") == Report(HealthEvent.WENT_DOWN, 1, "timed out")
    assert health.succeeded(0.5) == Report(HealthEvent.CAME_BACK, 1, "")
    reports = []
    for second in range(1, 121):
        reports.append(health.failed(float(second), "timed out"))
        reports.append(health.succeeded(second + 0.5))
    said = [r for r in reports if r is not None]
    assert said == [
        Report(HealthEvent.FLAPPING, 60, "timed out", outages=60),  # at 60.5 s
        Report(HealthEvent.FLAPPING, 60, "timed out", outages=60),  # at 120.5 s
    ]
    assert health.up is True


def test_an_outage_that_began_as_a_flap_and_lasts_is_reported_to_its_end() -> None:
    health = BackendHealth(summary_every=60.0)
    health.failed(0.0, "timed out")
    health.succeeded(1.0)  # CAME_BACK: the next minute's outages are flaps
    assert health.failed(10.0, "timed out") is None  # a flap, not said yet
    assert [health.failed(float(t), "timed out") for t in range(11, 61)] == [None] * 50
    # the summary is due: one flap so far, still down
    assert health.failed(61.0, "ConnectionError") == Report(
        HealthEvent.FLAPPING, 52, "ConnectionError", outages=1
    )
    assert health.failed(121.0, "ConnectionError") == Report(
        HealthEvent.STILL_DOWN, 1, "ConnectionError"
    )
    assert health.succeeded(122.0) == Report(HealthEvent.CAME_BACK, 53, "")


def test_flaps_are_said_once_things_are_quiet_too() -> None:
    health = BackendHealth(summary_every=60.0)
    health.failed(0.0, "timed out")
    health.succeeded(1.0)
    assert health.failed(2.0, "timed out") is None
    assert health.succeeded(3.0) is None
    assert [health.succeeded(float(t)) for t in range(4, 60)] == [None] * 56
    assert health.succeeded(61.0) == Report(HealthEvent.FLAPPING, 1, "timed out", outages=1)
    assert health.succeeded(200.0) is None
    # a minute after the last line, an outage is reported on its own again
    assert health.failed(300.0, "timed out") == Report(HealthEvent.WENT_DOWN, 1, "timed out")
