"""National ingest, the reference consumer of the export queue (what the national side runs).

For each ``export.batch`` (v2, or v3 with clinical records; unsigned v1 batches are
dead-lettered):

1. **deduplicate** by ``batch_id``: a batch already ingested (a republish after an exporter
   crash) is answered with the receipt it got the first time, and nothing is stored twice;
2. fetch the national batch manifest, check its sha256, its **Ed25519 signature** (public key
   only, ``SMARTBOX_EXPORT_VERIFY_KEY``) and its schema; a failure rejects every study with
   the reason (``manifest_sha256_mismatch``, ``unknown_signing_key``, ``signature_invalid``,
   ``manifest_invalid``);
3. per study: the study manifest's sha256, that it lists exactly the batch's objects, then
   every object's sha256, streamed into the archive bucket; the study is accepted or rejected
   with the first reason (``study_manifest_mismatch``, ``checksum_mismatch``, ``size_mismatch``,
   ``object_missing``);
4. apply withdrawals (delete the study's archived objects) and key-rotation maps (link old
   pseudonyms to new: ``consumers.national_links``) and say ``applied``; verify, archive and
   link the clinical records (national batch manifest v2) to their patient's studies by
   pseudonym (``consumers.clinical.national``) and say ``accepted`` or ``rejected`` for each;
5. publish ``export.receipt`` (v3 when it answers clinical records, else v2), then record the
   batch as ingested.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any

import schemas
from smartbox import layout, logs, metrics
from smartbox.bus import Bus
from smartbox.errors import NotFound, PermanentError, SchemaError
from smartbox.signing import Verifier
from smartbox.store import ObjectStore, get_json, put_json
from smartbox.transfer import BadObject, copy_verified, read_verified

from . import national_links
from .clinical import national as national_clinical

log = logging.getLogger(__name__)


class _Rejected(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NationalIngest:
    """Handles ``export.batch`` messages on the national side."""

    def __init__(
        self,
        store: ObjectStore,
        bus: Bus,
        *,
        verifier: Verifier,
        archive_bucket: str = "national-archive",
    ) -> None:
        self.store = store
        self.bus = bus
        self.verifier = verifier
        self.archive = archive_bucket
        self.producer = schemas.producer_name("ingest")
        self._ready = False

    def handle(self, message: dict[str, Any]) -> None:
        started = time.monotonic()
        code, body = message["trust"], message["body"]
        if message["version"] < 2:
            raise PermanentError("export.batch v1 is unsigned: not accepted")
        if not self._ready:
            self.store.ensure_bucket(self.archive)
            self._ready = True
        seen = layout.ingest_batch_key(body["batch_id"])
        try:
            receipt_body = get_json(self.store, self.archive, seen)["receipt"]
            log.info("%s: batch %s seen before: receipt repeated", code, body["batch_id"])
        except NotFound:
            receipt_body = self._ingest(code, body)
        receipt = schemas.make_message(
            "export.receipt",
            trust=code,
            producer=self.producer,
            parents=[message],
            body=receipt_body,
            # v3 answers clinical records (a v3 batch); a batch of images alone gets v2
            version=3
            if "clinical" in receipt_body or "clinical_withdrawals" in receipt_body
            else 2,
        )
        self.bus.publish(receipt)
        put_json(self.store, self.archive, seen, {"receipt": receipt_body, "at": time.time()})
        metrics.STAGE_SECONDS.labels(code, "ingest").observe(time.monotonic() - started)

    def _manifest(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            raw = self.store.get_bytes(body["bucket"], body["manifest_key"])
        except NotFound:
            raise _Rejected("manifest_invalid") from None
        if hashlib.sha256(raw).hexdigest() != body["manifest_sha256"]:
            raise _Rejected("manifest_sha256_mismatch")
        if body["key_id"] != self.verifier.key_id:
            raise _Rejected("unknown_signing_key")
        if not self.verifier.verify(raw, bytes.fromhex(body["signature"])):
            raise _Rejected("signature_invalid")
        try:
            manifest: dict[str, Any] = json.loads(raw)
            version = manifest.get("version") if isinstance(manifest, dict) else None
            if version not in (1, 2):  # v2: v1 plus clinical records
                raise SchemaError("national.batch: unknown version")
            schemas.validate_document("national.batch", manifest, version)
        except (ValueError, SchemaError):
            raise _Rejected("manifest_invalid") from None
        listed = sorted(s["export_id"] for s in manifest["studies"])
        if manifest["batch_id"] != body["batch_id"] or listed != sorted(
            s["export_id"] for s in body["studies"]
        ):
            raise _Rejected("manifest_invalid")
        if bool(manifest.get("synthetic")) != bool(body.get("synthetic")):
            raise _Rejected("manifest_invalid")  # only the signed manifest decides "synthetic"
        for field in ("clinical", "clinical_withdrawals"):
            if sorted(c["export_id"] for c in manifest.get(field, [])) != sorted(
                c["export_id"] for c in body.get(field, [])
            ):
                raise _Rejected("manifest_invalid")
        return manifest

    def _ingest(self, code: str, body: dict[str, Any]) -> dict[str, Any]:
        results: list[dict[str, Any]] = []
        verified = failures = missing = 0
        withdrawals: list[dict[str, Any]] = []
        rotations: list[dict[str, Any]] = []
        clinical: list[dict[str, Any]] = []
        clinical_withdrawals: list[dict[str, Any]] = []
        try:
            manifest = self._manifest(body)
        except _Rejected as exc:
            results = [
                {
                    "export_id": s["export_id"],
                    "study_uid": s["study_uid"],
                    "status": "rejected",
                    "reason": exc.reason,
                }
                for s in body["studies"]
            ]
            withdrawals = [
                {"export_id": w["export_id"], "status": "rejected", "reason": exc.reason}
                for w in body["withdrawals"]
            ]
            rotations = [
                {"rotation_id": r["rotation_id"], "status": "rejected", "reason": exc.reason}
                for r in body.get("rotations", [])
            ]
            clinical = [
                {"export_id": c["export_id"], "status": "rejected", "reason": exc.reason}
                for c in body.get("clinical", [])
            ]
            clinical_withdrawals = [
                {"export_id": c["export_id"], "status": "rejected", "reason": exc.reason}
                for c in body.get("clinical_withdrawals", [])
            ]
            log.error("%s: batch %s rejected: %s", code, body["batch_id"], exc.reason)
        else:
            # each study's own correlation id (from study.arrived), where the exporter sent it
            correlations = {s["export_id"]: s.get("correlation_id") for s in body["studies"]}
            for study in manifest["studies"]:
                result = {"export_id": study["export_id"], "study_uid": study["study_uid"]}
                with logs.context(correlation_id=correlations.get(study["export_id"])):
                    try:
                        # a probe batch (signed synthetic): verified, archived nowhere
                        archive = not manifest.get("synthetic")
                        verified += self._study(body["bucket"], study, archive=archive)
                        result["status"] = "accepted"
                        log.info("%s: study version %s accepted", code, study["export_id"])
                    except (_Rejected, BadObject) as exc:
                        failures += exc.reason in ("checksum_mismatch", "size_mismatch")
                        missing += exc.reason == "object_missing"
                        result.update(status="rejected", reason=exc.reason)
                        log.error(
                            "%s: study version %s rejected: %s",
                            code,
                            study["export_id"],
                            exc.reason,
                        )
                results.append(result)
            withdrawals = [self._withdraw(w) for w in manifest["withdrawals"]]
            # key-rotation maps (signed through their sha256): old pseudonyms linked to new
            rotations = [
                national_links.apply(self.store, body["bucket"], self.archive, r)
                for r in manifest.get("rotations", [])
            ]
            # clinical records (signed through their sha256): archived, linked by pseudonym
            clinical = [
                national_clinical.ingest(
                    self.store, body["bucket"], self.archive, c, keep=not manifest.get("synthetic")
                )
                for c in manifest.get("clinical", [])
            ]
            for c in clinical:
                log.info("%s: clinical record %s %s", code, c["export_id"], c["status"])
            clinical_withdrawals = [
                national_clinical.withdraw(self.store, self.archive, w)
                for w in manifest.get("clinical_withdrawals", [])
            ]
        if not body.get("synthetic"):  # probe studies are counted by the probe, not here
            for r in results:
                metrics.INGEST_STUDIES.labels(code, r["status"], r.get("reason", "")).inc()
            metrics.INSTANCES_INGESTED.labels(code).inc(verified)
        if failures:
            metrics.INGEST_CHECKSUM_FAILURES.labels(code).inc(failures)
        accepted = sum(r["status"] == "accepted" for r in results)
        status = (
            "accepted" if accepted == len(results) else "rejected" if not accepted else "partial"
        )
        log.info(
            "%s: batch %s: %d/%d studies accepted", code, body["batch_id"], accepted, len(results)
        )
        return {
            "batch_id": body["batch_id"],
            "status": status,
            "studies": results,
            "withdrawals": withdrawals,
            **({"rotations": rotations} if rotations else {}),
            **({"clinical": clinical} if clinical else {}),
            **({"clinical_withdrawals": clinical_withdrawals} if clinical_withdrawals else {}),
            "instances_expected": body["instance_count"],
            "instances_verified": verified,
            "checksum_failures": failures,
            "missing": missing,
            "stored_bucket": self.archive,
        }

    def _study(self, bucket: str, study: dict[str, Any], *, archive: bool = True) -> int:
        """Verify and (unless ``archive`` is false) archive one study version; the number of
        objects verified."""
        raw = read_verified(self.store, bucket, study["manifest_key"], study["manifest_sha256"])
        try:
            listed = {(i["key"], i["sha256"]) for i in json.loads(raw)["instances"]}
        except (ValueError, KeyError, TypeError):
            raise _Rejected("study_manifest_mismatch") from None
        if listed != {(o["key"], o["sha256"]) for o in study["objects"]}:
            raise _Rejected("study_manifest_mismatch")
        for obj in study["objects"]:
            if not archive:
                if len(read_verified(self.store, bucket, obj["key"], obj["sha256"])) != obj["size"]:
                    raise _Rejected("size_mismatch")
                continue
            copy_verified(
                self.store, bucket, self.store, self.archive, obj["key"], obj["sha256"], obj["size"]
            )
        if archive:
            self.store.put_bytes(self.archive, study["manifest_key"], raw)
            # the patient's studies, by pseudonym, beside their clinical records
            national_clinical.link_study(self.store, self.archive, json.loads(raw))
        return len(study["objects"])

    def _withdraw(self, withdrawal: dict[str, Any]) -> dict[str, Any]:
        """Delete a withdrawn study version from the archive (nothing to do if never stored)."""
        try:
            manifest = get_json(self.store, self.archive, withdrawal["manifest_key"])
        except NotFound:
            manifest = {"instances": []}
        for inst in manifest.get("instances", []):
            self.store.delete(self.archive, inst["key"])
        if manifest.get("study_uid"):
            national_clinical.unlink_study(self.store, self.archive, manifest)
        self.store.delete(self.archive, withdrawal["manifest_key"])
        return {"export_id": withdrawal["export_id"], "status": "applied"}
