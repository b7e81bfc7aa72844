"""One export batch, from claim to published ``export.batch``; resumable at every step.

1. **claim** ``_export/claims/<trust>/<selection>.json`` (created with ``If-None-Match``): the
   chosen study versions and their attempt numbers; the selection id is derived from them.
2. **copy** each study: its objects streamed and verified into the national bucket, then its
   study manifest; progress is saved in the claim after every study, so a crash or an outage
   resumes at the study in flight. A bad object (missing, short, wrong sha256) sets that study
   aside with the reason; the others go on.
3. **manifest**: the national batch manifest lists every study manifest with its sha256 and
   every object; its canonical bytes are signed (Ed25519, detached ``.sig``). The batch id is
   derived from the study manifests, their sha256 and attempt numbers: a republish after a
   crash is the same batch (same id, same message id) and the national side deduplicates it.
4. **mark sent** (records and markers) and save the message in the claim, **publish** it
   (confirmed), then drop the claim. A claim found with a saved message is published again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import schemas
from smartbox import layout, metrics
from smartbox.bus import Bus
from smartbox.errors import NotFound, SchemaError
from smartbox.signing import Signer
from smartbox.store import ObjectStore
from smartbox.transfer import BadObject, copy_verified

from . import rotation
from .clinical import export as clinical_export
from .export_state import ExportState

log = logging.getLogger(__name__)
_MESSAGE_NS = uuid.UUID("5b7e3f0e-7f6f-4a0e-9a43-6d1c2b9e0a51")


def selection_id(trust: str, entries: list[tuple[str, int]]) -> str:
    """Id of a claim: the (export id, attempt) pairs it covers."""
    text = "selection:" + trust + ":" + ";".join(f"{i}:{a}" for i, a in sorted(entries))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def batch_id_for(
    trust: str,
    studies: list[dict[str, Any]],
    withdrawals: list[str],
    rotations: list[str] | None = None,
    clinical: list[dict[str, Any]] | None = None,
    clinical_withdrawals: list[str] | None = None,
) -> str:
    """Content address of a batch: its study manifests (id, sha256, attempt), withdrawals,
    rotation maps (ids are content addresses themselves) and clinical records (id, sha256,
    attempt)."""
    parts = sorted(f"{s['export_id']}:{s['manifest_sha256']}:{s['attempt']}" for s in studies)
    text = f"batch:{trust}|" + ";".join(parts) + "|" + ";".join(sorted(withdrawals))
    if rotations:  # a batch without one keeps the id it always had
        text += "|rotations:" + ";".join(sorted(rotations))
    if clinical:  # likewise
        text += "|clinical:" + ";".join(
            sorted(f"{c['export_id']}:{c['sha256']}:{c['attempt']}" for c in clinical)
        )
    if clinical_withdrawals:
        text += "|clinical-withdrawals:" + ";".join(sorted(clinical_withdrawals))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


class BatchRunner:
    """Carries claims through copy, manifest, signature and publication."""

    def __init__(
        self,
        state: ExportState,
        national: ObjectStore,
        national_bucket: str,
        bus: Bus,
        signer: Signer,
        *,
        heartbeat: Callable[[], None] = lambda: None,
        progress: Callable[[int], None] = lambda n: None,
        synthetic: bool = False,
    ) -> None:
        self.state = state
        self.store = state.store
        self.national = national
        self.national_bucket = national_bucket
        self.bus = bus
        self.signer = signer
        self.heartbeat = heartbeat
        self.progress = progress
        #: probe studies to the canary bucket (consumers.export_canary): batches say so
        self.synthetic = synthetic
        self.producer = schemas.producer_name("exporter")

    def run(self, key: str, claim: dict[str, Any]) -> dict[str, Any]:
        """Finish a claim; returns it with ``outcome`` (published batch id, set-aside studies)."""
        if claim.get("message") is None:
            self._copy(key, claim)
            self._manifest(key, claim)
        if claim.get("message") is not None:
            self._mark_sent(claim)
            self.bus.publish(claim["message"])
            if not self.synthetic:  # the trusts' export metrics count real batches only
                metrics.EXPORT_TRUST_BATCHES.labels(claim["trust"]).inc()
        self.state.drop_claim(key)
        return claim

    # --- 2. copy -------------------------------------------------------------------------
    def _copy(self, key: str, claim: dict[str, Any]) -> None:
        code = claim["trust"]
        for export_id in claim["ids"]:
            if export_id in claim["progress"]:
                continue
            record = self.state.get(code, export_id)
            if record is None:
                claim["progress"][export_id] = {"status": "bad", "reason": "manifest_invalid"}
                continue
            try:
                claim["progress"][export_id] = self._copy_study(
                    record, claim["attempts"][export_id]
                )
            except BadObject as exc:
                metrics.EXPORT_BAD_OBJECTS.labels(code, exc.reason).inc()
                log.error("%s: study version %s set aside: %s", code, export_id, exc.reason)
                claim["progress"][export_id] = {"status": "bad", "reason": exc.reason}
            self.state.save_claim(key, claim)
            self.progress(1)
            self.heartbeat()

    def _copy_study(self, record: dict[str, Any], attempt: int) -> dict[str, Any]:
        bucket, mkey = record["bucket"], record["manifest_key"]
        try:
            raw = self.store.get_bytes(bucket, mkey)
        except NotFound:
            raise BadObject("object_missing", mkey) from None
        try:
            manifest = json.loads(raw)
            schemas.validate_document("staging.study", manifest)
        except (ValueError, SchemaError):
            raise BadObject("manifest_invalid", mkey) from None
        objects = []
        series: Counter[str] = Counter()
        for inst in manifest["instances"]:
            copy_verified(
                self.store,
                bucket,
                self.national,
                self.national_bucket,
                inst["key"],
                inst["sha256"],
                inst["size"],
            )
            objects.append({"key": inst["key"], "sha256": inst["sha256"], "size": inst["size"]})
            series[inst.get("series_uid") or "unknown"] += 1
        self.national.put_bytes(self.national_bucket, mkey, raw)
        return {
            "status": "copied",
            "export_id": record["export_id"],
            "study_uid": record["study_uid"],
            "manifest_key": mkey,
            "manifest_sha256": hashlib.sha256(raw).hexdigest(),
            "attempt": attempt,
            "amendment": bool(manifest.get("amendment", False)),
            "series": dict(manifest.get("series") or series),
            "objects": objects,
        }

    # --- 3. manifest and signature ---------------------------------------------------------
    def _manifest(self, key: str, claim: dict[str, Any]) -> None:
        code = claim["trust"]
        studies = [
            {k: v for k, v in p.items() if k != "status"}
            for p in (claim["progress"][i] for i in claim["ids"])
            if p["status"] == "copied"
        ]
        withdrawals = [
            {
                "export_id": w["export_id"],
                "study_uid": w["study_uid"],
                "manifest_key": w["manifest_key"],
            }
            for w in claim.get("withdrawals", [])
        ]
        rotations = rotation.export(
            self.store,
            self.state.bucket,
            self.national,
            self.national_bucket,
            claim.get("rotations", []),
        )
        clinical = clinical_export.export(
            self.store,
            self.state.bucket,
            self.national,
            self.national_bucket,
            claim.get("clinical", []),
        )
        clinical_withdrawals = [
            {k: w[k] for k in ("export_id", "record_id", "patient", "key")}
            for w in claim.get("clinical_withdrawals", [])
        ]
        if not studies and not withdrawals and not rotations and not clinical:
            if not clinical_withdrawals:
                return
        batch_id = batch_id_for(
            code,
            studies,
            [w["export_id"] for w in withdrawals],
            [r["rotation_id"] for r in rotations],
            clinical,
            [w["export_id"] for w in clinical_withdrawals],
        )
        # v2 only with clinical records (or their withdrawals): a batch of images alone stays
        # v1, byte for byte, for a national side that knows only v1
        version = 2 if clinical or clinical_withdrawals else 1
        document = {
            "document": "national.batch",
            "version": version,
            "batch_id": batch_id,
            "trust": code,
            "key_id": self.signer.key_id,
            "studies": studies,
            "withdrawals": withdrawals,
            # key-rotation maps, each by its sha256: signed with the rest
            **({"rotations": rotations} if rotations else {}),
            # clinical records, each by its sha256: signed with the rest
            **({"clinical": clinical} if clinical else {}),
            **({"clinical_withdrawals": clinical_withdrawals} if clinical_withdrawals else {}),
            # signed with the rest: the national side archives nothing of a synthetic batch
            **({"synthetic": True} if self.synthetic else {}),
        }
        schemas.validate_document("national.batch", document, version)
        data = canonical(document)
        signature = self.signer.sign(data)
        manifest_key = layout.national_batch_key(code, batch_id)
        self.national.put_bytes(self.national_bucket, manifest_key, data)
        self.national.put_bytes(
            self.national_bucket, layout.national_signature_key(code, batch_id), signature
        )
        records = {
            s["export_id"]: r
            for s in studies
            if (r := self.state.get(code, s["export_id"])) is not None
        }
        parents = [
            {"message_id": r["message_id"], "correlation_id": r["correlation_id"]}
            for r in records.values()
        ]
        claim["batch_id"] = batch_id
        claim["clinical_sent"] = clinical
        claim["message"] = schemas.make_message(
            "export.batch",
            trust=code,
            producer=self.producer,
            parents=parents,
            correlation_id=str(uuid.UUID(batch_id)),
            message_id=str(uuid.uuid5(_MESSAGE_NS, batch_id)),
            # v3 only for a batch carrying clinical data: one of images alone stays v2, which
            # a national consumer built before clinical intake still reads
            version=3 if clinical or clinical_withdrawals else 2,
            body={
                "batch_id": batch_id,
                "bucket": self.national_bucket,
                "manifest_key": manifest_key,
                "manifest_sha256": hashlib.sha256(data).hexdigest(),
                "signature": signature.hex(),
                "key_id": self.signer.key_id,
                "study_count": len(studies),
                "instance_count": sum(len(s["objects"]) for s in studies),
                "bytes": sum(o["size"] for s in studies for o in s["objects"]),
                "studies": [
                    {
                        "export_id": s["export_id"],
                        "study_uid": s["study_uid"],
                        "instance_count": len(s["objects"]),
                        "attempt": s["attempt"],
                        # the study's own correlation id (from study.arrived), for the
                        # national side's log lines: the batch has its own
                        **(
                            {"correlation_id": records[s["export_id"]]["correlation_id"]}
                            if s["export_id"] in records
                            else {}
                        ),
                    }
                    for s in studies
                ],
                "withdrawals": [
                    {"export_id": w["export_id"], "study_uid": w["study_uid"]} for w in withdrawals
                ],
                **(
                    {"rotations": [{"rotation_id": r["rotation_id"]} for r in rotations]}
                    if rotations
                    else {}
                ),
                **(
                    {
                        "clinical": [
                            {"export_id": c["export_id"], "record_id": c["record_id"]}
                            for c in clinical
                        ]
                    }
                    if clinical
                    else {}
                ),
                **(
                    {
                        "clinical_withdrawals": [
                            {"export_id": w["export_id"]} for w in clinical_withdrawals
                        ]
                    }
                    if clinical_withdrawals
                    else {}
                ),
                **({"synthetic": True} if self.synthetic else {}),
            },
        )
        self.state.save_claim(key, claim)

    # --- 4. mark sent ----------------------------------------------------------------------
    def _mark_sent(self, claim: dict[str, Any]) -> None:
        code, batch_id = claim["trust"], claim["batch_id"]
        now = time.time()
        for study in claim["message"]["body"]["studies"]:
            record = self.state.get(code, study["export_id"])
            if record is None or record["state"] != "pending":
                continue  # already marked (a resumed claim), or withdrawn meanwhile
            record.update(state="sent", batch_id=batch_id, sent_at=now, attempts=study["attempt"])
            record["batches"] = [*record["batches"], batch_id]
            self.state.mark_sent(record)
            self.state.dequeue(record)
            self.state.put(record)
        for w in claim.get("withdrawals", []):
            w.update(batch_id=batch_id, sent_at=now)
            self.state.save_withdrawal(w)
        rotation.mark_sent(self.store, self.state.bucket, claim.get("rotations", []), batch_id, now)
        clinical_export.mark_sent(
            self.store, self.state.bucket, code, claim.get("clinical_sent", []), batch_id, now
        )
        clinical_export.withdrawals_sent(
            self.store, self.state.bucket, claim.get("clinical_withdrawals", []), batch_id, now
        )
