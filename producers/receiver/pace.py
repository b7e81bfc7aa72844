"""Intake pacing: back-pressure on the senders while the uploads to quarantine fall behind.

Intake and uploads share the host (on a small one the S3 server needs most of the CPU): a
sender can out-run the uploads, and a backfill that does so for long fills the spool to its
high-water mark, where the receiver answers 0xA700 to every sender of the trust.

So while the uploads lag behind by more than ``lag_target`` (a minute, by default) *and make
progress*, each C-STORE response is held back a little (at most ``MAX_PACE`` seconds, on the
association's own thread, after the instance is durable): the sender slows towards what the
box uploads and the backlog stops growing, instead of the spool filling until the receiver
refuses everyone. When the uploads make no progress (S3 or the network down) nothing is held
back: that is what the spool is for, and the outage alerts say so. The pace is a gauge
(``smartbox_receiver_intake_pace_seconds``) and the time held back a counter
(``smartbox_receiver_paced_seconds_total``).
"""

from __future__ import annotations

#: the most a C-STORE response is held back (s): a slowed sender, never a timed-out one
MAX_PACE = 0.02
#: the pace moves in steps of this (s), so that the workers are told only real changes
RESOLUTION = 0.0005
#: uploads that finished nothing for this long are stalled, not slow: no pacing
STALLED_SECONDS = 2.0


def lag_target(quiet_seconds: float, configured: float | None = None) -> float:
    """The upload lag (age of the oldest instance awaiting upload, s) past which intake is
    paced: the trust file's ``intake_pace_lag_seconds`` (0: never), else twice the quiet period
    and at least a minute. A sustained overload, not a burst: a big study that out-runs the
    uploads for the seconds it is sent is left alone, because pacing it costs more than it
    saves (a 2,000-instance study paced at half a quiet period of lag, 0.5 s, met its
    completion target in every round but reached quarantine 25-30 % later on a 2-core VM:
    the sender waited while the CPU it left went unused). A backfill that keeps the uploads
    a minute behind is slowed instead of filling the spool to its high-water mark."""
    if configured is not None:
        return configured
    return max(60.0, 2 * quiet_seconds)


class IntakePace:
    """The delay per C-STORE response, from the upload lag and the uploads' progress.

    Proportional, with no memory but the progress: 0 while the lag is at most ``target``,
    rising linearly to ``MAX_PACE`` at twice the target, so that a sender held back settles
    where the uploads keep the lag a little over the target (an integrating rule, a step up
    per poll while over and down only well under, held senders at the cap long after the
    uploads had caught up). 0 as soon as the uploads have finished nothing for
    ``STALLED_SECONDS``, and always for a target of 0.
    """

    def __init__(self, target: float) -> None:
        self.target = target  # 0: never paced
        self.pace = 0.0
        self._uploaded = 0
        self._progress_at: float | None = None

    def update(self, lag: float, uploaded_total: int, now: float) -> float:
        """The new pace (s per response). ``lag``: the upload lag now (s); ``uploaded_total``:
        how many uploads have finished since start (only its growth counts); ``now``:
        monotonic seconds."""
        if uploaded_total != self._uploaded:
            self._uploaded = uploaded_total
            self._progress_at = now
        stalled = self._progress_at is None or now - self._progress_at > STALLED_SECONDS
        if self.target <= 0 or stalled or lag <= self.target:
            self.pace = 0.0
        else:
            share = min(1.0, (lag - self.target) / self.target)
            self.pace = round(MAX_PACE * share / RESOLUTION) * RESOLUTION
        return self.pace
