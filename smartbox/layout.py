"""Every storage key smartbox writes, built and parsed in one place (storage layouts are contracts).

::

    quarantine  <trust>/<study_key>/<instance_key>-<sha16>.dcm        identifiable original
                <trust>/<study_key>/batches/<batch_id>.json           quarantine batch manifest
    staging     <trust>/<pseudo study uid>/<sop uid>-<sha16>.dcm      de-identified instance
                <trust>/<pseudo study uid>/manifest-<batch_id>.json   study manifest (one version
                                                                      per staged batch)
                <trust>/_clinical/<record_id>-<sha16>.json            pseudonymised clinical record
                                                                      (clinical.record v1; a new
                                                                      version is a new key)
                <trust>/_clinical/submissions/<submission_id>.json    what one clinical submit did
                _parts/<trust>/<batch_id>/<index>-of-<count>.json     one chunk's part of a
                                                                      batch's manifest (until
                                                                      the batch is announced)
                _export/...                                           exporter state (below)
    national    the staged instance, study manifest and clinical record keys, unchanged
                _batches/<trust>/<batch_id>.json (+ .sig)             signed national batch manifest
                _rotations/<trust>/<rotation_id>.json                 rotation map (key rotation)
    archive     (national side) the same keys; _ingest/patients/<pseudonym>/study/<uid> and
                _ingest/patients/<pseudonym>/clinical/<record_id>.json link a patient's
                studies and clinical records
    identity    index/<trust>/<patient|study>/<blind>/<version>.bin   encrypted identity index

Exporter state (bucket ``staging``), one small object per fact so that no step lists the
whole backlog: a study's record of truth, markers that index it by what is waiting for it
(queue per trust, class and day; sent; day ledger), open claims, the lease, withdrawals. Done
records and receipts are compacted into one archive object per trust and day
(``archive/<trust>/records-<day>.json``, ``receipts-<day>.json``). A clinical record version
has its own small state (``clinical/<trust>/<export_id>.json``) and, until the national side
accepts it, a queue marker (``clinical-queue/<trust>/<export_id>``); a patient index
(``clinical-patients/<pseudonym>/<trust>/<export_id>``) and the withdrawals of exported
versions waiting for a batch (``clinical-withdrawals/<trust>/<export_id>.json``).
Days are UTC dates (``YYYY-MM-DD``), so a lexical listing is oldest first.

``*_key`` functions build keys; ``parse_*`` functions take one apart (ValueError if it is not of
that shape). Nothing else in smartbox spells a key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

EXPORT = "_export/"
LEASE = f"{EXPORT}lease.json"
LAST_SUCCESS = f"{EXPORT}last_success.json"
NATIONAL_BATCHES = "_batches/"
CLASSES = ("prospective", "backfill")  # export order: prospective first

_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_STAGED_MANIFEST = re.compile(
    r"^(?P<trust>[A-Z0-9]{2,8})/(?P<uid>2\.25\.\d+)/manifest-(?P<id>[0-9a-f]{32})\.json$"
)
_QUARANTINE_BATCH = re.compile(
    r"^(?P<trust>[A-Z0-9]{2,8})/(?P<study>[0-9a-f]{32})/batches/(?P<id>[0-9a-f]{32})\.json$"
)


def day_of(ts: float) -> str:
    """The UTC day (``YYYY-MM-DD``) a unix time falls on: the unit of the day indexes."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


# --- quarantine (receiver) ------------------------------------------------------------------
def quarantine_instance_key(trust: str, study_key: str, instance_key: str, sha256: str) -> str:
    """Where the receiver uploads one original (content-addressed: a new version is a new key)."""
    return f"{trust}/{study_key}/{instance_key}-{sha256[:16]}.dcm"


def quarantine_batch_key(trust: str, study_key: str, batch_id: str) -> str:
    """The quarantine batch manifest listing the originals of one ``study.arrived``."""
    return f"{trust}/{study_key}/batches/{batch_id}.json"


@dataclass(frozen=True)
class QuarantineBatch:
    trust: str
    study_key: str
    batch_id: str


def parse_quarantine_batch_key(key: str) -> QuarantineBatch:
    """Take a quarantine batch manifest key apart (ValueError if it is not one)."""
    m = _QUARANTINE_BATCH.match(key)
    if not m:
        raise ValueError("not a quarantine batch manifest key")
    return QuarantineBatch(m["trust"], m["study"], m["id"])


# --- staging (anonymiser) -------------------------------------------------------------------
def staged_instance_key(trust: str, study_uid: str, sop_uid: str, sha256: str) -> str:
    """Where a de-identified instance is staged (content-addressed, like quarantine)."""
    return f"{trust}/{study_uid}/{sop_uid}-{sha256[:16]}.dcm"


def staged_study_prefix(trust: str, study_uid: str) -> str:
    """Everything staged for one study: its instances and its batch manifests."""
    return f"{trust}/{study_uid}/"


def study_manifest_key(trust: str, study_uid: str, batch_id: str) -> str:
    """One version of a study's manifest: the staged batch ``batch_id`` of that study."""
    return f"{trust}/{study_uid}/manifest-{batch_id}.json"


@dataclass(frozen=True)
class StudyManifestRef:
    trust: str
    study_uid: str
    batch_id: str


def parse_study_manifest_key(key: str) -> StudyManifestRef:
    """Take a study manifest key apart (ValueError if it is not one)."""
    m = _STAGED_MANIFEST.match(key)
    if not m:
        raise ValueError("not a study manifest key")
    return StudyManifestRef(m["trust"], m["uid"], m["id"])


def is_study_manifest_key(key: str) -> bool:
    return _STAGED_MANIFEST.match(key) is not None


# --- clinical records (clinical stage, exporter) -------------------------------------------
_CLINICAL_RECORD = re.compile(
    r"^(?P<trust>[A-Z0-9]{2,8})/_clinical/(?P<id>[0-9a-f]{32})-(?P<sha>[0-9a-f]{16})\.json$"
)


def clinical_record_key(trust: str, record_id: str, sha256: str) -> str:
    """Where a pseudonymised clinical record version is staged (content-addressed)."""
    return f"{trust}/_clinical/{record_id}-{sha256[:16]}.json"


def is_clinical_record_key(key: str) -> bool:
    return _CLINICAL_RECORD.match(key) is not None


def clinical_submission_key(trust: str, submission_id: str) -> str:
    """The report of one ``smartbox clinical submit`` (counts and reasons, no values)."""
    return f"{trust}/_clinical/submissions/{submission_id}.json"


def clinical_state_key(trust: str, export_id: str) -> str:
    """A clinical record version's export state (pending, sent, acked, failed, withdrawn)."""
    return f"{EXPORT}clinical/{trust}/{export_id}.json"


def clinical_queue_prefix(trust: str) -> str:
    return f"{EXPORT}clinical-queue/{trust}/"


def clinical_queue_key(trust: str, export_id: str) -> str:
    """Marker: this clinical record version waits for (or awaits the receipt of) a batch."""
    return f"{clinical_queue_prefix(trust)}{export_id}"


def clinical_patient_prefix(patient: str) -> str:
    return f"{EXPORT}clinical-patients/{patient}/"


def clinical_patient_key(patient: str, trust: str, export_id: str) -> str:
    """Index marker: ``trust``'s clinical record version ``export_id`` is ``patient``'s (so a
    withdrawal finds it)."""
    return f"{clinical_patient_prefix(patient)}{trust}/{export_id}"


def clinical_withdrawal_prefix(trust: str) -> str:
    return f"{EXPORT}clinical-withdrawals/{trust}/"


def clinical_withdrawal_key(trust: str, export_id: str) -> str:
    """A withdrawal of an exported clinical record version, waiting for the trust's next batch."""
    return f"{clinical_withdrawal_prefix(trust)}{export_id}.json"


PARTS = "_parts/"
_PART = re.compile(
    r"^_parts/[A-Z0-9]{2,8}/[0-9a-f]{32}/(?P<index>\d{5})-of-(?P<count>\d{5})\.json$"
)


def manifest_parts_prefix(trust: str, batch_id: str) -> str:
    """The parts of one batch's study manifest, one per ``study.arrived`` chunk."""
    return f"{PARTS}{trust}/{batch_id}/"


def manifest_part_key(trust: str, batch_id: str, index: int, count: int) -> str:
    """Chunk ``index`` of ``count``: the manifest entries of the instances that chunk staged."""
    return f"{manifest_parts_prefix(trust, batch_id)}{index:05d}-of-{count:05d}.json"


def parse_manifest_part_key(key: str) -> tuple[int, int]:
    """(index, count) of a manifest part key (ValueError if it is not one)."""
    m = _PART.match(key)
    if not m:
        raise ValueError("not a manifest part key")
    return int(m["index"]), int(m["count"])


# --- exporter state (staging bucket) --------------------------------------------------------
def record_key(trust: str, export_id: str) -> str:
    """A staged study version's record of truth (state, attempts, batches)."""
    return f"{EXPORT}studies/{trust}/{export_id}.json"


def queue_prefix(trust: str, klass: str) -> str:
    return f"{EXPORT}queue/{trust}/{klass}/"


def queue_key(trust: str, klass: str, day: str, export_id: str) -> str:
    """Marker: waiting to be exported (or re-sent). Listing a prefix is oldest day first."""
    return f"{queue_prefix(trust, klass)}{day}/{export_id}"


def sent_prefix(trust: str) -> str:
    return f"{EXPORT}sent/{trust}/"


def sent_key(trust: str, export_id: str) -> str:
    """Marker: exported, no receipt yet (a short list: only what is in flight)."""
    return f"{sent_prefix(trust)}{export_id}"


def days_prefix(trust: str) -> str:
    return f"{EXPORT}days/{trust}/"


def day_prefix(trust: str, day: str) -> str:
    return f"{days_prefix(trust)}{day}/"


def day_key(trust: str, day: str, export_id: str) -> str:
    """Ledger marker: staged on ``day`` (what reconciliation expects to see delivered)."""
    return f"{day_prefix(trust, day)}{export_id}"


def acked_prefix(trust: str) -> str:
    return f"{EXPORT}acked/{trust}/"


def acked_key(trust: str, day: str, export_id: str) -> str:
    """Marker: acknowledged on ``day``, its staging copy not yet purged (retention's work list)."""
    return f"{acked_prefix(trust)}{day}/{export_id}"


def claims_prefix() -> str:
    return f"{EXPORT}claims/"


def claim_key(trust: str, selection_id: str) -> str:
    """An export batch in progress: its studies and per-study progress (resumable)."""
    return f"{claims_prefix()}{trust}/{selection_id}.json"


def canary_claim_key(trust: str, export_id: str) -> str:
    """A probe study's export to the canary bucket in progress: deliberately outside
    ``claims_prefix``, so that no export pass ever resumes it into the national bucket."""
    return f"{EXPORT}canary-claims/{trust}/{export_id}.json"


def patient_key(patient: str, trust: str, export_id: str) -> str:
    """Index marker: ``trust``'s study version ``export_id`` holds pseudonymous ``patient``.
    Empty while the study's record is its own object; once the record is compacted into its
    day's archive, the marker holds that day (``YYYY-MM-DD``), so a withdrawal still finds it."""
    return f"{EXPORT}patients/{patient}/{trust}/{export_id}"


def patient_prefix(patient: str) -> str:
    return f"{EXPORT}patients/{patient}/"


def withdrawn_key(patient: str) -> str:
    """A withdrawn (opted-out) patient pseudonym: later studies of theirs are held back."""
    return f"{EXPORT}withdrawn/{patient}.json"


def withdrawn_generation_key() -> str:
    """Changes on every withdrawal: readers drop their cached "not withdrawn" answers."""
    return f"{EXPORT}withdrawn-generation"


def withdrawal_outbox_prefix(trust: str) -> str:
    return f"{EXPORT}withdrawals/{trust}/"


def withdrawal_outbox_key(trust: str, export_id: str) -> str:
    """A withdrawal of already exported data, waiting for the trust's next batch."""
    return f"{withdrawal_outbox_prefix(trust)}{export_id}.json"


def dead_key(trust: str, export_id: str) -> str:
    """Marker: re-sent ``max_attempts`` times and still rejected: surfaced, never looped."""
    return f"{EXPORT}dead/{trust}/{export_id}.json"


def marker_id(key: str) -> str:
    """The export id at the end of a marker key (ValueError if there is none)."""
    tail = key.rsplit("/", 1)[-1].removesuffix(".json")
    if not _HEX32.match(tail):
        raise ValueError("not an export marker key")
    return tail


def marker_day(key: str) -> str:
    """The day segment before the id of a queue, day or acked marker."""
    return key.rsplit("/", 2)[-2]


# --- national destination -------------------------------------------------------------------
def national_batch_key(trust: str, batch_id: str) -> str:
    """The national batch manifest (lists every study manifest with its sha256)."""
    return f"{NATIONAL_BATCHES}{trust}/{batch_id}.json"


def national_signature_key(trust: str, batch_id: str) -> str:
    """The detached Ed25519 signature of the national batch manifest's bytes."""
    return f"{NATIONAL_BATCHES}{trust}/{batch_id}.sig"


def ingest_batch_key(batch_id: str) -> str:
    """National side: a batch already ingested, with the receipt that answered it (dedup)."""
    return f"_ingest/batches/{batch_id}.json"


def receipt_key(trust: str, batch_id: str) -> str:
    """The national side's receipt of a batch, kept for audit."""
    return f"{EXPORT}receipts/{trust}/{batch_id}.json"


def receipts_prefix(trust: str) -> str:
    return f"{EXPORT}receipts/{trust}/"


def archive_prefix(trust: str) -> str:
    return f"{EXPORT}archive/{trust}/"


def archived_records_key(trust: str, day: str) -> str:
    """The records of the trust's study versions staged on ``day`` that are done (acknowledged,
    held or withdrawn, and purged), compacted into one object."""
    return f"{archive_prefix(trust)}records-{day}.json"


def archived_receipts_key(trust: str, day: str) -> str:
    """The national receipts the trust's batches got on ``day``, compacted into one object."""
    return f"{archive_prefix(trust)}receipts-{day}.json"


_ARCHIVE = re.compile(
    r"^_export/archive/(?P<trust>[A-Z0-9]{2,8})/(?P<kind>records|receipts)-"
    r"(?P<day>\d{4}-\d{2}-\d{2})\.json$"
)


def parse_archive_key(key: str) -> tuple[str, str, str]:
    """(trust, ``records`` or ``receipts``, day) of an archive key (ValueError otherwise)."""
    m = _ARCHIVE.match(key)
    if not m:
        raise ValueError("not an export archive key")
    return m["trust"], m["kind"], m["day"]


def trusts_prefix() -> str:
    return f"{EXPORT}trusts/"


def trust_key(trust: str) -> str:
    """Marker: this trust has staged studies (the list a pass goes round)."""
    return f"{trusts_prefix()}{trust}"


# --- identity index and key rotation (consumers.identity_index, consumers.rotation) ---------
#: bucket ``identity`` (its own: identifiers, encrypted; never exported, never in staging)
IDENTITY = "index/"
_IDENTITY_ENTRY = re.compile(
    r"^index/(?P<trust>[A-Z0-9]{2,8})/(?P<kind>patient|study)/(?P<blind>[0-9a-f]{32})/"
    r"(?P<version>[A-Za-z0-9._-]{1,16})\.bin$"
)


@dataclass(frozen=True)
class IdentityEntryRef:
    trust: str
    kind: str
    blind: str
    version: str


def identity_prefix(trust: str) -> str:
    return f"{IDENTITY}{trust}/"


def identity_entry_key(trust: str, kind: str, blind: str, version: str) -> str:
    """One identifier's pseudonym under one key version; ``blind`` is a keyed hash of the
    identifier (the key names nothing), the object is encrypted with the index's own key."""
    return f"{identity_prefix(trust)}{kind}/{blind}/{version}.bin"


def parse_identity_entry_key(key: str) -> IdentityEntryRef:
    """Take an identity index key apart (ValueError if it is not one)."""
    m = _IDENTITY_ENTRY.match(key)
    if not m:
        raise ValueError("not an identity index key")
    return IdentityEntryRef(m["trust"], m["kind"], m["blind"], m["version"])


def rotation_map_key(trust: str, rotation_id: str) -> str:
    """Staging: a signed-on-export map from old to new pseudonyms (``rotation.map`` v1)."""
    return f"{EXPORT}rotations/{trust}/{rotation_id}.json"


def rotation_outbox_prefix(trust: str) -> str:
    return f"{EXPORT}rotation-outbox/{trust}/"


def rotation_outbox_key(trust: str, rotation_id: str) -> str:
    """A rotation map waiting for the trust's next batch (dropped once applied nationally)."""
    return f"{rotation_outbox_prefix(trust)}{rotation_id}.json"


def national_rotation_key(trust: str, rotation_id: str) -> str:
    """National bucket: the rotation map as exported (listed, with its sha256, in a signed
    national batch manifest)."""
    return f"_rotations/{trust}/{rotation_id}.json"


def national_link_key(kind: str, pseudonym: str) -> str:
    """National archive: an old pseudonym (``patient``) or pseudo study UID (``study``) and
    the one that replaced it at a rotation."""
    return f"_ingest/links/{kind}/{pseudonym}.json"


def national_link_reverse_prefix(kind: str, pseudonym: str) -> str:
    return f"_ingest/links/{kind}-from/{pseudonym}/"


def national_link_reverse_key(kind: str, pseudonym: str, earlier: str) -> str:
    """National archive marker: ``earlier`` was replaced by ``pseudonym`` at a rotation (the
    link read backwards: which older pseudonyms a current one has)."""
    return f"{national_link_reverse_prefix(kind, pseudonym)}{earlier}"


def national_patient_prefix(patient: str) -> str:
    return f"_ingest/patients/{patient}/"


def national_patient_study_key(patient: str, study_uid: str) -> str:
    """National archive marker: ``patient`` has the archived study ``study_uid``."""
    return f"{national_patient_prefix(patient)}study/{study_uid}"


def national_patient_clinical_key(patient: str, record_id: str) -> str:
    """National archive: ``patient``'s clinical record ``record_id`` (its latest version)."""
    return f"{national_patient_prefix(patient)}clinical/{record_id}.json"
