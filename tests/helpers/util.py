from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

IN_CI = os.environ.get("CI", "").lower() == "true"


def missing(what: str) -> None:
    """Skip locally, fail in CI: a missing service or tool fails the run when ``CI=true``."""
    import pytest

    if IN_CI:
        pytest.fail(f"{what} (CI=true: a missing service fails the run)")
    pytest.skip(what)


def wait_for(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll until ``predicate`` returns something truthy; fail naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
