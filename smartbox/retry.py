"""Retry policy for transient failures (tenacity), shared by every stage."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
    wait_random,
)

from .errors import TransientError

T = TypeVar("T")
log = logging.getLogger(__name__)


def call_with_retry(
    fn: Callable[[], T],
    *,
    what: str,
    max_seconds: float = 300.0,
    initial: float = 0.5,
    max_wait: float = 30.0,
    on_retry: Callable[[], Any] | None = None,
) -> T:
    """Call ``fn``; on TransientError back off exponentially (with jitter) up to ``max_seconds``.

    After that the last TransientError propagates, so the caller can nack/requeue or report.
    """

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            "%s: transient failure (attempt %d, %s), retrying",
            what,
            state.attempt_number,
            exc.__class__.__name__ if exc else "?",
        )
        if on_retry:
            on_retry()

    retrying = Retrying(
        retry=retry_if_exception_type(TransientError),
        wait=wait_exponential(multiplier=initial, max=max_wait) + wait_random(0, initial),
        stop=stop_after_delay(max_seconds),
        before_sleep=before_sleep,
        reraise=True,
    )
    return retrying(fn)
