"""The anonymiser: study.arrived -> de-identify each instance -> staging -> study.staged.

Reads only ``quarantine`` (identifiable) and writes only ``staging`` (de-identified). For each
batch it writes the de-identified instances under ``<trust>/<pseudo study uid>/`` and a batch
manifest ``manifest-<batch_id>.json`` beside them (sha256 per object, what was held back and
why, table edition, key and code version); the batch manifests of a study together are its
manifest, and none is ever rewritten, so concurrent batches of one study cannot race.

Object keys come from keyed, deterministic UIDs: re-processing a redelivered message rewrites
the same objects with the same bytes, so a crash mid-study still yields every instance exactly
once in staging. The message is acked only after every object and the manifest are written and
``study.staged`` is confirmed.

One instance never blocks its study. What fails for one instance alone is held back with a
``Reason`` (an exception in the de-identifier: ``deid_error`` with its class as detail; a
quarantine object that is gone: ``source_missing``; one that still differs from its recorded
sha256 when read again: ``source_checksum_mismatch``) and the rest is staged and announced.
Storage or broker unavailable (``TransientError``) and anything unexpected outside the
de-identifier propagate, so the message is retried, never acked: the object may well be there.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import schemas
from consumers.deid import Deidentifier, DeidPolicy, PolicyBuilder
from consumers.deid.identity import Fingerprint
from consumers.deid.pseudonyms import Linkage
from consumers.deid.reasons import Reason, exception_detail
from smartbox import __version__, layout, logs, metrics
from smartbox.bus import Bus
from smartbox.canary import PROBE_PATIENT_ID
from smartbox.errors import ConfigError, PermanentError, SchemaError
from smartbox.keys import RegionalKey
from smartbox.store import ObjectStore, get_json, put_json
from smartbox.transfer import BadObject, read_verified
from smartbox.trusts import TrustConfig, TrustRegistry

from . import study_parts
from .identity_check import conflicts, earlier_study
from .identity_index import IdentityIndex
from .study_parts import Staged
from .withdraw import WithdrawalRegistry

log = logging.getLogger(__name__)
BATCH_CACHE = 8  # quarantine batch manifests kept for their next chunks


@dataclass(frozen=True)
class _Outcome:
    study_uid: str | None
    reason: Reason | None
    nhs_number_valid: bool
    detail: str | None = None
    #: for the identity index (key rotation): identifying, never logged
    linkage: Linkage | None = field(default=None, repr=False)
    #: keyed fingerprints of the source's patient (study consistency check), never logged
    identity: Fingerprint | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Buckets:
    quarantine: str = "quarantine"
    staging: str = "staging"


def staged_study_uid_fallback(key: RegionalKey, study_key: str) -> str:
    """A pseudo study UID for a batch none of whose instances could be parsed."""
    return "2.25." + str(int.from_bytes(key.digest("study-fallback", study_key)[:16], "big"))


def describe_profile(policy: DeidPolicy) -> dict[str, Any]:
    """What was applied, for the manifest: profile, options and the table edition."""
    import consumers.deid as deid

    return {
        "profile": "DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile",
        "options": sorted(policy.options),
        "table_edition": getattr(deid, "TABLE_EDITION", "unknown"),
    }


class Anonymiser:
    """Handles ``study.arrived`` messages."""

    def __init__(
        self,
        store: ObjectStore,
        bus: Bus,
        key: RegionalKey,
        trusts: TrustRegistry | dict[str, TrustConfig],
        buckets: Buckets = Buckets(),
        *,
        workers: int = 4,
        policies: PolicyBuilder | None = None,
        index: IdentityIndex | None = None,
    ) -> None:
        self.store = store
        self.bus = bus
        self.key = key
        self.trusts = (
            trusts if isinstance(trusts, TrustRegistry) else TrustRegistry(None, static=trusts)
        )
        self.buckets = buckets
        self.producer = schemas.producer_name("anonymiser")
        # the one policy builder (consumers.deid.policy), as smartbox deidentify uses it
        self.policies = policies if policies is not None else PolicyBuilder.from_env()
        self._engines: dict[str, tuple[TrustConfig, Deidentifier]] = {}
        self._lock = threading.Lock()
        self._ready = False
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="deid")
        self._batches: dict[tuple[str, str], dict[str, Any]] = {}
        self._withdrawn = WithdrawalRegistry(store, buckets.staging)
        # identifier -> pseudonym per key version, so that a key rotation keeps linkage
        self.index = index

    def engine_for(self, code: str) -> tuple[TrustConfig, Deidentifier]:
        """The trust's de-identifier, rebuilt when its trust file changed."""
        try:
            trust = self.trusts.get(code)
        except ConfigError as exc:
            raise PermanentError(f"anonymiser: {exc}") from None
        with self._lock:
            cached = self._engines.get(code)
            if cached is None or cached[0] is not trust:
                try:  # a trust file changed to something this box cannot run: the message
                    # is dead-lettered at once (replayable once fixed), never retried
                    policy = self.policies.for_trust(trust)
                    cached = (trust, Deidentifier(self.key, policy))
                except ConfigError as exc:
                    raise PermanentError(f"anonymiser: {exc}") from None
                self._engines[code] = cached
            return cached

    def _one(
        self, engine: Any, code: str, bucket: str, entry: dict[str, Any]
    ) -> tuple[_Outcome, dict[str, Any] | None]:
        """De-identify and stage one instance: its outcome and manifest entry (None: held back).

        Only the small outcome is kept, not the bytes: a 2,000-instance study must not sit in
        memory while the batch finishes.
        """
        raw = self._source(bucket, entry)
        if isinstance(raw, Reason):
            return _Outcome(None, raw, False), None
        try:
            result = engine.process(raw)
        except Exception as exc:  # noqa: BLE001 - process() holds back bad input itself; a
            # bug that escapes it must still cost this one instance only, not the study
            return _Outcome(None, Reason.DEID_ERROR, False, exception_detail(exc)), None
        outcome = _Outcome(
            result.study_uid,
            result.reason,
            result.nhs_number_valid,
            result.detail,
            result.linkage,
            result.identity,
        )
        if (
            result.ok
            and result.patient_pseudonym
            and self._withdrawn.is_withdrawn(result.patient_pseudonym)
        ):  # national data opt-out (smartbox withdraw): later studies are held back too
            return _Outcome(result.study_uid, Reason.WITHDRAWN, result.nhs_number_valid), None
        if not result.ok or result.data is None:
            return outcome, None
        digest = hashlib.sha256(result.data).hexdigest()
        # a new version of an instance (same UID, other bytes) is a new object, never an
        # overwrite: every manifest entry keeps matching its object
        obj_key = layout.staged_instance_key(
            code, result.study_uid, result.sop_instance_uid, digest
        )
        self.store.put_bytes(self.buckets.staging, obj_key, result.data, sha256=digest)
        return outcome, {
            "key": obj_key,
            "sha256": digest,
            "size": len(result.data),
            "study_uid": result.study_uid,
            "series_uid": result.series_uid,
            "sop_instance_uid": result.sop_instance_uid,
            "sop_class_uid": result.sop_class_uid,
            "modality": result.modality,
            "patient": result.patient_pseudonym,
            # overlay bits cleared from the pixel data (consumers.deid.pixel_bits)
            **(
                {"pixel_bits_cleared": result.pixel_bits_cleared}
                if result.pixel_bits_cleared
                else {}
            ),
        }

    def _source(self, bucket: str, entry: dict[str, Any]) -> bytes | Reason:
        """The quarantined original, or why this one instance cannot be used.

        Only answers that are final for this object become a reason: it does not exist
        (``NotFound``), its key is invalid, or it differs from its recorded sha256 on two
        reads (content-addressed keys: a mismatch is corruption, not a newer version).
        ``TransientError`` and anything unexpected propagate: the message is retried.
        """
        for _attempt in range(2):
            try:  # the one verified read (smartbox.transfer): whole object, sha256 checked
                return read_verified(self.store, bucket, entry["key"], entry["sha256"])
            except BadObject as exc:
                if exc.reason == "object_missing":
                    return Reason.SOURCE_MISSING
            except PermanentError:
                return Reason.SOURCE_INVALID
        return Reason.SOURCE_CHECKSUM_MISMATCH

    def _identity_conflict(
        self, code: str, batch_id: str, outcomes: list[tuple[_Outcome, dict[str, Any] | None]]
    ) -> tuple[list[bool], set[str]]:
        """(for each instance, whether it disagrees on its patient with the batch or with the
        study's earlier batches; the staged keys earlier manifests list, not to be deleted)."""
        study_uid = next((o.study_uid for o, _s in outcomes if o.study_uid), None)
        patients, keys = (
            earlier_study(self.store, self.buckets.staging, code, study_uid, batch_id)
            if study_uid
            else (set(), set())
        )
        staged_as = [s.get("patient") if s is not None else None for _o, s in outcomes]
        return conflicts([o.identity for o, _s in outcomes], staged_as, patients), keys

    def _batch(self, body: dict[str, Any], code: str) -> dict[str, Any]:
        """The quarantine batch manifest, validated; kept for the batch's next chunks (the
        same replica often takes several chunks of one batch)."""
        cache_key = (body["bucket"], body["batch_key"])
        with self._lock:
            batch = self._batches.get(cache_key)
        if batch is None:
            batch = get_json(self.store, body["bucket"], body["batch_key"])
            try:  # a storage contract, checked on read as the receiver checked it on write
                schemas.validate_document("quarantine.batch", batch)
            except SchemaError as exc:
                raise PermanentError(f"batch manifest invalid: {exc}") from None
            with self._lock:
                self._batches[cache_key] = batch
                while len(self._batches) > BATCH_CACHE:
                    self._batches.pop(next(iter(self._batches)))
        if batch["study_key"] != body["study_key"] or batch["trust"] != code:
            raise PermanentError("batch manifest does not belong to this message")
        return batch

    @staticmethod
    def _chunk(body: dict[str, Any], batch: dict[str, Any]) -> dict[str, int]:
        """The slice of the batch this message covers (v1: all of it)."""
        total = len(batch["instances"])
        chunk = body.get("chunk") or {"index": 0, "count": 1, "start": 0, "stop": total}
        if not (0 <= chunk["start"] < chunk["stop"] <= total and chunk["index"] < chunk["count"]):
            raise PermanentError("study.arrived chunk is not a slice of its batch")
        return dict(chunk)

    def _stage(
        self, engine: Any, code: str, body: dict[str, Any], entries: list[dict[str, Any]]
    ) -> tuple[Staged, list[Linkage]]:
        """De-identify and stage ``entries`` (a batch or one chunk of it)."""
        # instances in parallel: S3 round trips overlap with de-identification
        outcomes = list(
            self._pool.map(
                # the message's log context goes with each instance to the pool's threads
                logs.carry(lambda e: self._one(engine, code, body["bucket"], e)),
                entries,
            )
        )
        mixed, keep = self._identity_conflict(code, body["batch_id"], outcomes)
        staged = Staged()
        linkages: list[Linkage] = []
        for entry, (result, staged_entry), odd in zip(entries, outcomes, mixed, strict=True):
            staged.study_uid = staged.study_uid or result.study_uid
            source = entry["key"].rsplit("/", 1)[-1]
            if odd and staged_entry is not None:  # one study, one patient: never staged
                if staged_entry["key"] not in keep:
                    self.store.delete(self.buckets.staging, staged_entry["key"])
                result, staged_entry = (
                    _Outcome(
                        result.study_uid, Reason.PATIENT_IDENTITY_CONFLICT, result.nhs_number_valid
                    ),
                    None,
                )
            if staged_entry is None:
                reason = result.reason or Reason.DEID_ERROR
                item = {"source": source, "reason": reason.value}
                if result.detail:
                    item["detail"] = result.detail
                staged.held_back.append(item)
                continue
            if not result.nhs_number_valid:
                staged.fallbacks += 1
            staged.instances.append(staged_entry)
            staged.sources.append(source)
            if result.linkage is not None:
                linkages.append(result.linkage)
        return staged, linkages

    def handle(self, message: dict[str, Any]) -> None:
        started = time.monotonic()
        code = message["trust"]
        _trust, engine = self.engine_for(code)
        if not self._ready:
            self.store.ensure_bucket(self.buckets.staging)
            self._ready = True
        body = message["body"]
        self._withdrawn.refresh()  # a withdrawal since the last batch takes effect now
        batch = self._batch(body, code)
        chunk = self._chunk(body, batch)
        entries = batch["instances"][chunk["start"] : chunk["stop"]]
        staged, linkages = self._stage(engine, code, body, entries)
        metrics.INSTANCES_PROCESSED.labels(code).inc(len(entries))
        if self.index is not None:  # before the study is announced for export: durable first
            for linkage in linkages:
                self.index.record(code, self.key.version, linkage)
        provenance = {
            "deidentification": describe_profile(engine.policy),
            "key_version": self.key.version,
            "code_version": __version__,
        }
        parts: list[str] = []
        if chunk["count"] > 1:
            bucket = self.buckets.staging
            study_parts.write_part(self.store, bucket, body, code, staged, provenance)
            parts = study_parts.part_keys(
                self.store, bucket, code, body["batch_id"], chunk["count"]
            )
            if len(parts) < chunk["count"]:
                log.info(
                    "%s: study %s batch %s chunk %d of %d staged %d, held back %d",
                    code,
                    body["study_key"],
                    body["batch_id"],
                    chunk["index"] + 1,
                    chunk["count"],
                    len(staged.instances),
                    len(staged.held_back),
                )
                return  # the chunk that completes the set announces the batch
            staged, provenance, odd = study_parts.merge(self.store, bucket, parts)
            if odd and staged.study_uid:
                _patients, keep = earlier_study(
                    self.store, bucket, code, staged.study_uid, body["batch_id"]
                )
                for key in odd:
                    if key not in keep:
                        self.store.delete(bucket, key)
        self._announce(message, engine, batch, staged, provenance, started)
        study_parts.delete_parts(self.store, self.buckets.staging, parts)

    def _announce(
        self,
        message: dict[str, Any],
        engine: Any,
        batch: dict[str, Any],
        staged_batch: Staged,
        provenance: dict[str, Any],
        started: float,
    ) -> None:
        """Write the batch's study manifest and publish ``study.staged`` (confirmed)."""
        code, body = message["trust"], message["body"]
        instances = batch["instances"]
        staged, held = staged_batch.instances, staged_batch.held_back
        reasons = staged_batch.reasons()
        fallbacks = staged_batch.fallbacks
        if instances and reasons[Reason.SOURCE_MISSING] == len(instances):
            # none of the originals exists: a storage problem for a human, not a study to
            # announce empty (the message stays replayable in the dead-letter queue)
            raise PermanentError("no quarantine object of the batch exists")
        study_uid = staged_batch.study_uid or staged_study_uid_fallback(self.key, body["study_key"])
        # a smartbox probe: every staged instance is the reserved probe patient's (never exported)
        probe = engine.patient_pseudonym(None, PROBE_PATIENT_ID)[0]
        synthetic = bool(staged) and all(s["patient"] == probe for s in staged)
        manifest_key = layout.study_manifest_key(code, study_uid, body["batch_id"])
        manifest = {
            "trust": code,
            "study_uid": study_uid,
            "batch_id": body["batch_id"],
            "amendment": body["amendment"],
            "series": dict(Counter(str(s["series_uid"] or "unknown") for s in staged)),
            "instances": staged,
            "held_back": held,
            **provenance,
            **({"synthetic": True} if synthetic else {}),
        }
        schemas.validate_document("staging.study", manifest)  # a storage contract, checked on write
        put_json(self.store, self.buckets.staging, manifest_key, manifest)
        out = schemas.make_message(
            "study.staged",
            trust=code,
            producer=self.producer,
            parents=[message],
            body={
                "study_key": body["study_key"],
                "batch_id": body["batch_id"],
                "study_uid": study_uid,
                "bucket": self.buckets.staging,
                "manifest_key": manifest_key,
                "instances_in": len(instances),
                "instances_staged": len(staged),
                "instances_held_back": len(held),
                "held_back_reasons": {r.value: n for r, n in sorted(reasons.items())},
                "bytes_staged": sum(s["size"] for s in staged),
                "amendment": body["amendment"],
                # for the exporter's fairness (backfill or prospective): device names, a count
                "source": {
                    "calling_aes": batch.get("calling_aes", []),
                    "acquired_days_before_arrival": batch.get("acquired_days_before_arrival"),
                    "origin": batch.get("origin", "pushed"),
                },
                **({"synthetic": True} if synthetic else {}),
            },
        )
        self.bus.publish(out)
        if not synthetic:  # the trust's counts: probe studies are the probe's (smartbox.canary)
            metrics.INSTANCES_STAGED.labels(code).inc(len(staged))
            for reason, n in reasons.items():
                metrics.INSTANCES_HELD_BACK.labels(code, reason.label).inc(n)
            if fallbacks:
                metrics.NHS_FALLBACK.labels(code).inc(fallbacks)
            metrics.STUDIES_STAGED.labels(code).inc()
        metrics.STAGE_SECONDS.labels(code, "anonymise").observe(time.monotonic() - started)
        log.info(
            "%s: study %s batch %s staged %d, held back %d",
            code,
            body["study_key"],
            body["batch_id"],
            len(staged),
            len(held),
        )
