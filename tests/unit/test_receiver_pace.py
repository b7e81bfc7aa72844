"""Intake pacing's rule: hold responses back only while the uploads lag *and* progress."""

from __future__ import annotations

from pathlib import Path

import pytest

from producers.receiver.pace import MAX_PACE, STALLED_SECONDS, IntakePace, lag_target
from smartbox.errors import ConfigError
from smartbox.trusts import load_trust_file


def run(pace: IntakePace, steps: list[tuple[float, int]], start: float = 0.0) -> list[float]:
    """(lag, uploads finished so far) at one update every 0.5 s; the pace after each."""
    return [pace.update(lag, done, start + 0.5 * i) for i, (lag, done) in enumerate(steps)]


def test_the_pace_follows_the_lag_over_its_target_up_to_the_cap() -> None:
    pace = IntakePace(1.0)
    pace.update(0.0, 1, 0.0)  # uploads are finishing
    lags = [0.2, 1.0, 1.25, 1.5, 1.75, 2.0, 5.0, 1.1, 0.9]
    got = [pace.update(lag, 2 + i, 0.5 * (i + 1)) for i, lag in enumerate(lags)]
    quarter = MAX_PACE / 4
    assert got == pytest.approx(
        [0, 0, quarter, 2 * quarter, 3 * quarter, MAX_PACE, MAX_PACE, MAX_PACE / 10, 0]
    )


def test_the_pace_is_told_in_steps_not_every_jitter_of_the_lag() -> None:
    pace = IntakePace(1.0)
    pace.update(0.0, 1, 0.0)
    values = {pace.update(1.3 + k / 1000, 2 + k, 0.1 * k) for k in range(50)}
    assert len(values) <= 3  # 1.300-1.349 s of lag: a few steps of 0.5 ms


def test_uploads_that_finish_nothing_are_an_outage_and_never_slow_intake() -> None:
    pace = IntakePace(1.0)
    assert run(pace, [(50.0, 0)] * 10) == [0.0] * 10  # down from the start
    run(pace, [(3.0, 10 * i) for i in range(8)], 100.0)
    assert pace.pace == MAX_PACE
    # then the store stops answering: after STALLED_SECONDS without progress, 0 at once
    stalled = [pace.update(5.0, 70, 104.0 + t) for t in (0.5, 1.0, STALLED_SECONDS + 0.1)]
    assert stalled == [MAX_PACE, MAX_PACE, 0.0]
    assert pace.update(5.0, 71, 107.0) == MAX_PACE  # and back once uploads finish again


def test_a_target_of_zero_never_paces() -> None:
    assert run(IntakePace(0.0), [(900.0, 10 * i) for i in range(10)]) == [0.0] * 10


@pytest.mark.parametrize(
    ("quiet", "configured", "target"),
    [(1.0, None, 60.0), (60.0, None, 120.0), (600.0, None, 1200.0), (60.0, 5.0, 5.0), (60.0, 0, 0)],
)
def test_the_lag_target_is_a_sustained_overload_unless_the_trust_sets_it(
    quiet: float, configured: float | None, target: float
) -> None:
    """Two quiet periods and at least a minute: a burst is left alone."""
    assert lag_target(quiet, configured) == target


def test_intake_pacing_in_a_trust_file(tmp_path: Path) -> None:
    def trust(code: str, extra: str = "") -> Path:
        path = tmp_path / code / f"{code}.toml"
        path.parent.mkdir()
        path.write_text(
            f'code = "{code}"\nname = "Pacing"\nae_title = "SB_{code}"\nport = 11199\n'
            f'allowed_callers = ["PACS"]\n{extra}'
        )
        return path

    assert load_trust_file(trust("PON")).intake_pace_lag_seconds is None  # the default
    assert (
        load_trust_file(trust("POF", "intake_pace_lag_seconds = 0\n")).intake_pace_lag_seconds == 0
    )
    assert (
        load_trust_file(trust("PFV", "intake_pace_lag_seconds = 5\n")).intake_pace_lag_seconds == 5
    )
    for i, bad in enumerate(('"no"', "true", "-1")):
        with pytest.raises(ConfigError, match="field 'intake_pace_lag_seconds': must be a number"):
            load_trust_file(trust(f"PB{i}", f"intake_pace_lag_seconds = {bad}\n"))
