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
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import schemas
from consumers.deid import Deidentifier, DeidPolicy, PseudonymKey
from smartbox import __version__, metrics
from smartbox.bus import Bus
from smartbox.config import TrustConfig, TrustRegistry
from smartbox.errors import ConfigError, PermanentError
from smartbox.keys import RegionalKey
from smartbox.store import ObjectStore, get_json, put_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Outcome:
    study_uid: str | None
    reason: str | None
    nhs_number_valid: bool


@dataclass(frozen=True)
class Buckets:
    quarantine: str = "quarantine"
    staging: str = "staging"


def staged_study_uid_fallback(key: RegionalKey, study_key: str) -> str:
    """A pseudo study UID for a batch none of whose instances could be parsed."""
    return "2.25." + str(int.from_bytes(key.digest("study-fallback", study_key)[:16], "big"))


def describe_profile(trust: TrustConfig) -> dict[str, Any]:
    """What was applied, for the manifest: profile, options and the table edition."""
    import consumers.deid as deid

    return {
        "profile": "DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile",
        "options": sorted(trust.deid_options),
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
    ) -> None:
        self.store = store
        self.bus = bus
        self.key = key
        self.trusts = (
            trusts if isinstance(trusts, TrustRegistry) else TrustRegistry(None, static=trusts)
        )
        self.buckets = buckets
        self.producer = schemas.producer_name("anonymiser")
        self._pkey = PseudonymKey(secret=key.secret, version=key.version)
        self._engines: dict[str, tuple[TrustConfig, Deidentifier]] = {}
        self._lock = threading.Lock()
        self._ready = False
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="deid")

    def engine_for(self, code: str) -> tuple[TrustConfig, Deidentifier]:
        """The trust's de-identifier, rebuilt when its trust file changed."""
        try:
            trust = self.trusts.get(code)
        except ConfigError as exc:
            raise PermanentError(f"anonymiser: {exc}") from None
        with self._lock:
            cached = self._engines.get(code)
            if cached is None or cached[0] is not trust:
                policy = DeidPolicy(
                    trust_code=code,
                    nhs_number_attribute=trust.nhs_number_attribute,
                    options=frozenset(trust.deid_options),
                    mask_rules=tuple(trust.deid_mask_rules),
                    ocr=trust.deid_ocr,
                    ocr_scope=trust.deid_ocr_scope,
                    ocr_match=trust.deid_ocr_match,
                )
                cached = (trust, Deidentifier(self._pkey, policy))
                self._engines[code] = cached
            return cached

    def _one(
        self, engine: Any, code: str, bucket: str, entry: dict[str, Any]
    ) -> tuple[_Outcome, dict[str, Any] | None]:
        """De-identify and stage one instance: its outcome and manifest entry (None: held back).

        Only the small outcome is kept, not the bytes: a 2,000-instance study must not sit in
        memory while the batch finishes.
        """
        raw = self.store.get_bytes(bucket, entry["key"])
        if hashlib.sha256(raw).hexdigest() != entry["sha256"]:
            raise PermanentError("quarantine object does not match its recorded sha256")
        result = engine.process(raw)
        outcome = _Outcome(result.study_uid, result.reason, result.nhs_number_valid)
        if not result.ok or result.data is None:
            return outcome, None
        digest = hashlib.sha256(result.data).hexdigest()
        # a new version of an instance (same UID, other bytes) is a new object, never an
        # overwrite: every manifest entry keeps matching its object
        obj_key = f"{code}/{result.study_uid}/{result.sop_instance_uid}-{digest[:16]}.dcm"
        self.store.put_bytes(self.buckets.staging, obj_key, result.data)
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
        }

    def handle(self, message: dict[str, Any]) -> None:
        started = time.monotonic()
        code = message["trust"]
        trust, engine = self.engine_for(code)
        if not self._ready:
            self.store.ensure_bucket(self.buckets.staging)
            self._ready = True
        body = message["body"]
        batch = get_json(self.store, body["bucket"], body["batch_key"])
        if batch.get("study_key") != body["study_key"] or batch.get("trust") != code:
            raise PermanentError("batch manifest does not belong to this message")
        staged: list[dict[str, Any]] = []
        held: list[dict[str, str]] = []
        reasons: Counter[str] = Counter()
        study_uid: str | None = None
        fallbacks = 0
        # instances of a batch in parallel: S3 round trips overlap with de-identification
        outcomes = list(
            self._pool.map(lambda e: self._one(engine, code, body["bucket"], e), batch["instances"])
        )
        for entry, (result, staged_entry) in zip(batch["instances"], outcomes, strict=True):
            study_uid = study_uid or result.study_uid
            if staged_entry is None:
                reason = result.reason or "unknown"
                reasons[reason] += 1
                held.append({"source": entry["key"].rsplit("/", 1)[-1], "reason": reason})
                continue
            if not result.nhs_number_valid:
                fallbacks += 1
            staged.append(staged_entry)
        study_uid = study_uid or staged_study_uid_fallback(self.key, body["study_key"])
        manifest_key = f"{code}/{study_uid}/manifest-{body['batch_id']}.json"
        put_json(
            self.store,
            self.buckets.staging,
            manifest_key,
            {
                "trust": code,
                "study_uid": study_uid,
                "batch_id": body["batch_id"],
                "amendment": body["amendment"],
                "instances": staged,
                "held_back": held,
                "deidentification": describe_profile(trust),
                "key_version": self.key.version,
                "code_version": __version__,
            },
        )
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
                "instances_in": len(batch["instances"]),
                "instances_staged": len(staged),
                "instances_held_back": len(held),
                "held_back_reasons": dict(reasons),
                "bytes_staged": sum(s["size"] for s in staged),
                "amendment": body["amendment"],
            },
        )
        self.bus.publish(out)
        metrics.INSTANCES_STAGED.labels(code).inc(len(staged))
        for reason, n in reasons.items():
            metrics.INSTANCES_HELD_BACK.labels(code, reason.split(":", 1)[0]).inc(n)
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
