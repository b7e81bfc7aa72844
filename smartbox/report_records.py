"""Read the box's own records of what happened to a trust's studies, for ``smartbox report``.

Each reader knows one kind of record; the keys are built and parsed by ``smartbox.layout``:

============  ==================================================  ===========================
record        where                                               written by
============  ==================================================  ===========================
received      quarantine batch manifest (one per study batch)     receiver (relay)
staged        staging study manifest (one per staged batch)       anonymiser
exported,     the exporter's record of truth per staged batch     exporter
acknowledged  (``state``, ``sent_at``, ``acked_at``), or its day's
              archive once it is done (``archive/<trust>/records-<day>``)
============  ==================================================  ===========================

Manifests carry no time, so their day is their object's last-modified time (S3
``Last-Modified``, the file's mtime in the local store); the exporter's records carry
``sent_at`` and ``acked_at``. Days are in the trust's time zone. A record that is missing,
unreadable or of another shape is skipped and counted, never fatal: quarantine is purged after
its retention period, and a report must still come out. Studies of ``smartbox probe`` (staged
and export records ``synthetic``) are not a trust's data: they are left out (``Records.probes``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from . import layout
from .errors import NotFound, PermanentError
from .store import ObjectStore, entries_if_bucket, get_json

_REASON_RE = re.compile(r"[^A-Za-z0-9_:.-]")
T = TypeVar("T")


@dataclass(frozen=True)
class Profile:
    """The de-identification that a staging manifest says was applied."""

    profile: str
    options: tuple[str, ...]
    table_edition: str
    key_version: str
    code_version: str


@dataclass(frozen=True)
class Received:
    batch_id: str
    study: str  # opaque study key: used to count distinct studies, never printed
    instances: int
    amendment: bool
    day: date
    at: float = 0.0  # when its manifest was written (last-modified)


@dataclass(frozen=True)
class Staged:
    batch_id: str
    study: str  # pseudonymous study UID: counted, never printed
    instances: int
    held_back: dict[str, int]
    amendment: bool
    profile: Profile | None
    day: date


@dataclass(frozen=True)
class Export:
    """The exporter's record of one staged batch."""

    batch_id: str
    study: str
    instances: int
    state: str  # pending, sent, acked, failed, held, withdrawn (consumers.export_state)
    sent_day: date | None
    acked_day: date | None


@dataclass
class Records:
    """Everything found for one trust (all days; the report selects its period)."""

    received: list[Received] = field(default_factory=list)
    staged: list[Staged] = field(default_factory=list)
    exports: list[Export] = field(default_factory=list)
    skipped: int = 0  # records present but unreadable or of an unknown shape
    #: last-modified time of the newest quarantine batch manifest listed (``smartbox status``:
    #: when the trust last sent something), whatever ``since`` left unread
    last_received: float | None = None
    #: batch ids of smartbox probe studies (``synthetic``): left out of every list above
    probes: set[str] = field(default_factory=set)


def clean_reason(reason: object) -> str:
    """A held-back reason as a short label from the closed vocabulary's alphabet: reasons are
    codes (``burned_in_annotation``, ``verification_failed:pattern``), never free text, and
    whatever else arrives must not carry a value into the report."""
    text = _REASON_RE.sub("_", str(reason))[:64]
    return text or "unknown"


def _day(record: dict[str, Any], time_fields: tuple[str, ...], mtime: float, tz: ZoneInfo) -> date:
    for name in time_fields:
        value = record.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return datetime.fromtimestamp(value, tz).date()
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(tz).date()
            except ValueError:
                continue
    return datetime.fromtimestamp(mtime, tz).date()


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TypeError("not a count")
    return value


def _json_records(
    store: ObjectStore,
    bucket: str,
    prefix: str,
    records: Records,
    parse: Callable[[str], T],
    *,
    since: float | None = None,
    listed: Callable[[float], None] | None = None,
) -> Iterator[tuple[T, dict[str, Any], float]]:
    """(parsed key, record, last-modified) of the JSON objects under ``prefix`` whose key
    ``parse`` accepts; an absent bucket yields nothing, an unreadable object is skipped.
    ``since``: objects last modified before it are not read (a listing costs one request per
    1,000 keys, a read one per object); ``listed`` sees the time of every parsed key."""
    for key, _size, mtime in entries_if_bucket(store, bucket, prefix):
        try:
            m = parse(key)
        except ValueError:
            continue
        if listed is not None:
            listed(mtime)
        if since is not None and mtime < since:
            continue
        try:
            record = get_json(store, bucket, key)
        except (NotFound, PermanentError):
            records.skipped += 1
            continue
        if not isinstance(record, dict):
            records.skipped += 1
            continue
        yield m, record, mtime


def read_received(
    store: ObjectStore,
    bucket: str,
    code: str,
    tz: ZoneInfo,
    records: Records,
    since: float | None = None,
) -> None:
    """Quarantine batch manifests (one per study batch the receiver announced); with
    ``since``, only those written since then are read (``Records.last_received`` is still
    the newest of all)."""
    parse = layout.parse_quarantine_batch_key

    def listed(mtime: float) -> None:
        records.last_received = max(mtime, records.last_received or mtime)

    entries = _json_records(store, bucket, f"{code}/", records, parse, since=since, listed=listed)
    for ref, rec, mtime in entries:
        if ref.trust != code:
            continue
        try:
            records.received.append(
                Received(
                    batch_id=ref.batch_id,
                    study=ref.study_key,
                    instances=len(rec["instances"]),
                    amendment=bool(rec.get("amendment", False)),
                    day=_day(rec, ("announced_at", "received_at"), mtime, tz),
                    at=mtime,
                )
            )
        except (KeyError, TypeError):
            records.skipped += 1


def _profile(rec: dict[str, Any]) -> Profile | None:
    deid = rec.get("deidentification")
    if not isinstance(deid, dict):
        return None
    options = deid.get("options", [])
    return Profile(
        profile=str(deid.get("profile", "unknown")),
        options=tuple(sorted(str(o) for o in options)) if isinstance(options, list) else (),
        table_edition=str(deid.get("table_edition", "unknown")),
        key_version=str(rec.get("key_version", "unknown")),
        code_version=str(rec.get("code_version", "unknown")),
    )


def read_staged(store: ObjectStore, bucket: str, code: str, tz: ZoneInfo, records: Records) -> None:
    """Staging batch manifests (what the anonymiser staged and held back, per batch)."""
    parse = layout.parse_study_manifest_key
    for ref, rec, mtime in _json_records(store, bucket, f"{code}/", records, parse):
        if ref.trust != code:
            continue
        if rec.get("synthetic"):
            records.probes.add(ref.batch_id)
            continue
        try:
            held: dict[str, int] = {}
            for item in rec.get("held_back", []):
                reason = clean_reason(item.get("reason", "unknown"))
                held[reason] = held.get(reason, 0) + 1
            records.staged.append(
                Staged(
                    batch_id=ref.batch_id,
                    study=ref.study_uid,
                    instances=len(rec["instances"]),
                    held_back=held,
                    amendment=bool(rec.get("amendment", False)),
                    profile=_profile(rec),
                    day=_day(rec, ("staged_at",), mtime, tz),
                )
            )
        except (KeyError, TypeError, AttributeError):
            records.skipped += 1


def _export_prefix(code: str) -> str:
    """Where the trust's export records are (``layout.record_key`` without the id)."""
    return layout.record_key(code, "0" * 32).rsplit("/", 1)[0] + "/"


def read_exports(
    store: ObjectStore, bucket: str, code: str, tz: ZoneInfo, records: Records
) -> None:
    """The exporter's record of truth per staged batch: its state and when it was sent and
    acknowledged."""
    prefix = _export_prefix(code)

    def parse(key: str) -> str:
        if not key.startswith(prefix) or not key.endswith(".json"):
            raise ValueError("not an export record")
        return layout.marker_id(key)

    seen: set[str] = set()
    for export_id, rec, mtime in _json_records(store, bucket, prefix, records, parse):
        seen.add(export_id)
        _export(export_id, rec, mtime, tz, records)

    def archive(key: str) -> str:
        trust, kind, _day = layout.parse_archive_key(key)
        if trust != code or kind != "records":
            raise ValueError("not this trust's archived records")
        return key

    # done records compacted per day (consumers.export_compact); a record still its own object
    # as well (a compaction interrupted) is counted once, as that object says
    archived = _json_records(store, bucket, layout.archive_prefix(code), records, archive)
    for _key, doc, mtime in archived:
        items = doc.get("records")
        if not isinstance(items, dict):
            records.skipped += 1
            continue
        for export_id, rec in sorted(items.items()):
            if export_id not in seen and isinstance(rec, dict):
                seen.add(export_id)
                _export(export_id, rec, mtime, tz, records)


def _export(
    export_id: str, rec: dict[str, Any], mtime: float, tz: ZoneInfo, records: Records
) -> None:
    if rec.get("synthetic"):
        records.probes.add(export_id)
        return
    try:
        state = clean_reason(rec["state"])
        sent = rec.get("sent_at") is not None or bool(rec.get("batches"))
        records.exports.append(
            Export(
                batch_id=export_id,
                study=str(rec.get("study_uid", export_id)),
                instances=_count(rec["instances"]),
                state=state,
                sent_day=_day(rec, ("sent_at",), mtime, tz) if sent else None,
                acked_day=_day(rec, ("acked_at",), mtime, tz) if state == "acked" else None,
            )
        )
    except (KeyError, TypeError):
        records.skipped += 1


def read_records(
    store: ObjectStore, *, quarantine: str, staging: str, code: str, tz: ZoneInfo
) -> Records:
    """Every record of one trust in the box's object storage."""
    records = Records()
    read_received(store, quarantine, code, tz, records)
    read_staged(store, staging, code, tz, records)
    read_exports(store, staging, code, tz, records)
    # a probe's quarantine batch does not say it is one; its staged and exported records do
    records.received = [r for r in records.received if r.batch_id not in records.probes]
    return records
