"""How old a study was on arrival (``acquired_days_before_arrival``, the export's backfill or
prospective) is read from the header at intake and kept in the ledger as a count of days, so
the relay does not read every spool file's header again when it announces the study. Only an
instance whose date intake did not record (a ledger written before the column existed, a file
adopted by recovery) is read from its file, as before."""

from __future__ import annotations

import hashlib
import sqlite3
from datetime import date, timedelta
from pathlib import Path

from producers.receiver.acquired import days_before_arrival
from producers.receiver.spool import Spool
from smartbox.synthetic import make_ct_study

HIGH_WATER = 1 << 30


def spool_one(spool: Spool, study_key: str, n: int, data: bytes, acquired: date | None) -> None:
    tmp = spool.tmp / f"in-{n}.dcm"
    tmp.write_bytes(data)
    assert spool.accept(
        tmp,
        study_key=study_key,
        instance_key=f"{n:032x}",
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        modality="CT",
        high_water=HIGH_WATER,
        acquired=acquired,
    )


def ct_file(tmp_path: Path, acquired: date) -> bytes:
    study = make_ct_study(31, series=1, per_series=1)
    for ds in study.datasets:
        ds.AcquisitionDate = ds.ContentDate = ds.StudyDate = acquired.strftime("%Y%m%d")
    (path,) = study.write(tmp_path / "ct")
    return path.read_bytes()


def days_of(spool: Spool, study_key: str) -> tuple[list[int | None], int | None]:
    batch = spool.open_batch(study_key)
    assert batch is not None
    rows = [inst for inst, _state in spool.batch_instances(batch)]
    triples = [(i.path, i.received_at, i.acquired_days) for i in rows]
    return [i.acquired_days for i in rows], days_before_arrival(triples)


def test_intake_records_the_days_and_the_relay_reads_no_file_for_them(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    try:
        today = date.today()
        # the file says 30 days; intake read 400 and 12: the ledger's figures are used
        data = ct_file(tmp_path, today - timedelta(days=30))
        spool_one(spool, "a" * 32, 1, data, today - timedelta(days=400))
        spool_one(spool, "a" * 32, 2, data + b"\0\0", today - timedelta(days=12))
        assert days_of(spool, "a" * 32) == ([400, 12], 12)
    finally:
        spool.close()


def test_what_intake_did_not_record_is_read_from_the_file(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    try:
        today = date.today()
        spool_one(spool, "b" * 32, 1, ct_file(tmp_path, today - timedelta(days=30)), None)
        assert days_of(spool, "b" * 32) == ([None], 30)
        # no date anywhere (not DICOM at all): the study's age is not known
        spool_one(spool, "c" * 32, 2, b"not a dicom file", None)
        assert days_of(spool, "c" * 32) == ([None], None)
    finally:
        spool.close()


def test_a_ledger_from_before_the_column_gets_it_and_its_rows_are_read_from_files(
    tmp_path: Path,
) -> None:
    root = tmp_path / "spool"
    today = date.today()
    spool = Spool(root)
    spool_one(spool, "d" * 32, 1, ct_file(tmp_path, today - timedelta(days=7)), today)
    spool.close()
    db = sqlite3.connect(root / "ledger.sqlite3")  # as a receiver before the column wrote it
    db.execute("ALTER TABLE instances DROP COLUMN acquired_days")
    db.commit()
    db.close()
    spool = Spool(root)
    try:
        columns = {row[1] for row in spool._db.execute("PRAGMA table_info(instances)")}  # noqa: SLF001
        assert "acquired_days" in columns
        assert days_of(spool, "d" * 32) == ([None], 7)
        spool_one(spool, "d" * 32, 2, b"late", today - timedelta(days=3))  # recorded again
        assert days_of(spool, "d" * 32) == ([3], 3)
    finally:
        spool.close()
