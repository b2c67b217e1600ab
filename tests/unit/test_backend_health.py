from __future__ import annotations

from domain.backend_health import BackendHealth, HealthEvent, Report


def test_one_report_per_state_change_and_one_summary_per_period_while_down() -> None:
    health = BackendHealth(summary_every=60.0)
    assert health.succeeded() is None  # up from the start: nothing to say
    assert health.failed(0.0, "timed out") == Report(HealthEvent.WENT_DOWN, 1, "timed out")
    assert [health.failed(t, "timed out") for t in range(1, 60)] == [None] * 59
    assert health.failed(60.0, "ConnectionError") == Report(
        HealthEvent.STILL_DOWN, 60, "ConnectionError"
    )
    assert health.failed(61.0, "timed out") is None
    assert health.failed(120.0, "timed out") == Report(HealthEvent.STILL_DOWN, 2, "timed out")
    assert health.succeeded() == Report(HealthEvent.CAME_BACK, 63, "")
    assert health.succeeded() is None
    assert health.failed(500.0, "timed out") == Report(HealthEvent.WENT_DOWN, 1, "timed out")
