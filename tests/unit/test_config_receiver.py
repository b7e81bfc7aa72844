"""Receiver fields of a trust file: SCP worker processes and associations per worker."""

from __future__ import annotations

from pathlib import Path

import pytest

from smartbox.errors import ConfigError
from smartbox.trusts import load_trust

BASE = """
code = "RTK"
name = "Ashford and St Peter's Hospitals"
ae_title = "SMARTBOX_RTK"
port = 11112
allowed_callers = ["RTK_PACS"]
"""


def load(tmp_path: Path, extra: str = ""):
    (tmp_path / "RTK.toml").write_text(BASE + extra)
    return load_trust(tmp_path, "RTK")


def test_defaults_leave_the_worker_count_to_the_receiver(tmp_path: Path) -> None:
    trust = load(tmp_path)
    assert trust.workers is None
    assert trust.max_associations == 32


def test_receiver_fields_are_read(tmp_path: Path) -> None:
    trust = load(tmp_path, "workers = 0\nmax_associations = 8\nspool_high_water_bytes = 3145728\n")
    assert (trust.workers, trust.max_associations, trust.spool_high_water_bytes) == (0, 8, 3145728)


def test_deadlines_and_connection_caps(tmp_path: Path) -> None:
    trust = load(tmp_path)
    assert (trust.artim_seconds, trust.network_timeout_seconds) == (30.0, 60.0)
    assert (trust.max_pending_associations, trust.max_pending_per_address) == (128, 32)
    trust = load(
        tmp_path,
        "artim_seconds = 5\nnetwork_timeout_seconds = 120\n"
        "max_pending_associations = 16\nmax_pending_per_address = 2\n",
    )
    assert (trust.artim_seconds, trust.network_timeout_seconds) == (5.0, 120.0)
    assert (trust.max_pending_associations, trust.max_pending_per_address) == (16, 2)


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ("workers = -1", "workers"),
        ("workers = 65", "workers"),
        ('workers = "four"', "workers"),
        ("workers = true", "workers"),
        ("workers = 2.5", "workers"),
        ("max_associations = 0", "max_associations"),
        ("max_associations = 1.5", "max_associations"),
        ("spool_high_water_bytes = 10", "spool_high_water_bytes"),
        ("max_pending_associations = 0", "max_pending_associations"),
        ("max_pending_per_address = 2.5", "max_pending_per_address"),
        ("artim_seconds = 0", "artim_seconds"),
        ('network_timeout_seconds = "1m"', "network_timeout_seconds"),
    ],
)
def test_bad_receiver_field_is_named(tmp_path: Path, extra: str, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, extra + "\n")
    assert str(tmp_path / "RTK.toml") in str(err.value)
    assert f"'{field}'" in str(err.value)


def test_default_workers_share_the_cpus_among_the_trusts_of_the_host(tmp_path: Path) -> None:
    """13 trusts on 2-4 cores: one process each (the SCP on the receiver's threads), not the
    1 + min(4, cores) of before (65 processes on 4 cores); a trust alone keeps one per core."""
    from producers.receiver.workers import default_workers, trusts_on_host

    assert [default_workers(13, cpus) for cpus in (2, 4, 8)] == [0, 0, 0]
    assert [default_workers(1, cpus) for cpus in (1, 2, 4, 16)] == [1, 2, 4, 4]
    assert [default_workers(2, 4), default_workers(3, 4), default_workers(5, 4)] == [2, 1, 0]
    trust = load(tmp_path)
    assert trusts_on_host(trust) == 1
    for i in range(12):
        (tmp_path / f"RX{i:02d}.toml").write_text(BASE)
    assert trusts_on_host(trust) == 13
