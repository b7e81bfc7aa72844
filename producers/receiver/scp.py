"""The DICOM side of the receiver: a pynetdicom SCP for one trust (C-ECHO, C-STORE).

Failures become DICOM status codes here; the handler never raises. An instance is answered
Success only after ``Spool.write`` returned, i.e. the bytes as received
(``event.encoded_dataset()``, never re-encoded) and the ledger row are fsync'd.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import re
from typing import Any

from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from smartbox import metrics
from smartbox.config import TrustConfig
from smartbox.keys import RegionalKey

from .spool import Spool

log = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC210
PROCESSING_FAILURE = 0x0110
# Explicit VR Little Endian first: with both offered, the first we list wins (see MEASUREMENTS.md)
TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
]
_MODALITY_RE = re.compile(r"^[A-Z0-9_]{1,16}$")


def study_key_for(key: RegionalKey, trust: str, study_uid: str) -> str:
    return key.opaque_id("study-key", f"{trust}:{study_uid}")


def instance_key_for(key: RegionalKey, trust: str, sop_uid: str) -> str:
    return key.opaque_id("instance-key", f"{trust}:{sop_uid}")


class StoreSCP:
    """One trust's DICOM listener."""

    def __init__(self, trust: TrustConfig, spool: Spool, key: RegionalKey) -> None:
        self.trust = trust
        self.spool = spool
        self.key = key
        self.ae = AE(ae_title=trust.ae_title)
        self.ae.maximum_pdu_size = trust.max_pdu
        self.ae.require_called_aet = True
        if "*" not in trust.allowed_callers:
            self.ae.require_calling_aet = list(trust.allowed_callers)
        self.ae.network_timeout = 60
        self.ae.dimse_timeout = 60
        self.ae.acse_timeout = 30
        self.ae.maximum_associations = 32
        for cx in AllStoragePresentationContexts:
            self.ae.add_supported_context(cx.abstract_syntax, TRANSFER_SYNTAXES)
        self.ae.add_supported_context(Verification)
        self.server: ThreadedAssociationServer | None = None
        self._spool_bytes = 0

    def start(self) -> tuple[str, int]:
        handlers = [
            (evt.EVT_C_STORE, self.handle_store),
            (evt.EVT_C_ECHO, self.handle_echo),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
        ]
        self.server = self.ae.start_server(
            (self.trust.bind_host, self.trust.port), block=False, evt_handlers=handlers
        )
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        self.ae.shutdown()

    # --- handlers (association threads) -------------------------------------------------
    def _on_accepted(self, event: Any) -> None:
        metrics.ASSOCIATIONS.labels(self.trust.code, "accepted").inc()

    def _on_rejected(self, event: Any) -> None:
        metrics.ASSOCIATIONS.labels(self.trust.code, "rejected_calling_ae").inc()
        log.warning("%s: association rejected: calling AE not allowed", self.trust.code)

    def handle_echo(self, event: Any) -> int:
        return SUCCESS

    def handle_store(self, event: Any) -> int:
        status = self._store(event)
        metrics.CSTORE_STATUS.labels(self.trust.code, f"0x{status:04X}").inc()
        return status

    def _store(self, event: Any) -> int:
        code = self.trust.code
        try:
            ds = event.dataset
            study_uid = str(ds.StudyInstanceUID)
            sop_uid = str(event.request.AffectedSOPInstanceUID)
            modality = str(ds.get("Modality", "") or "OT").upper()
        except Exception:  # noqa: BLE001 - any decode failure is the sender's dataset
            metrics.FAILURES.labels(code, "receive", "undecodable").inc()
            log.warning("%s: C-STORE refused: dataset cannot be decoded", code)
            return CANNOT_UNDERSTAND
        if not study_uid or not sop_uid:
            metrics.FAILURES.labels(code, "receive", "missing_uid").inc()
            return CANNOT_UNDERSTAND
        if not _MODALITY_RE.match(modality):
            modality = "OT"
        try:
            data = event.encoded_dataset()
            digest = hashlib.sha256(data).hexdigest()
            study_key = study_key_for(self.key, code, study_uid)
            instance_key = instance_key_for(self.key, code, sop_uid)
            if self.spool.is_duplicate(instance_key, digest):
                metrics.DUPLICATES.labels(code, "identical").inc()
                return SUCCESS
            files, size, _ = self.spool.pending_stats()
            if size + len(data) > self.trust.spool_high_water_bytes:
                metrics.FAILURES.labels(code, "receive", "spool_full").inc()
                log.error("%s: spool at high-water mark (%d files); refusing", code, files)
                return OUT_OF_RESOURCES
            if self.spool.has_other_version(instance_key, digest):
                metrics.DUPLICATES.labels(code, "new_version").inc()
            self.spool.write(study_key, instance_key, digest, data, modality)
        except OSError as exc:
            metrics.FAILURES.labels(code, "receive", "disk").inc()
            log.error("%s: spool write failed: %s", code, errno.errorcode.get(exc.errno or 0, "?"))
            return OUT_OF_RESOURCES
        except Exception:  # noqa: BLE001 - the handler must answer, never raise
            metrics.FAILURES.labels(code, "receive", "unexpected").inc()
            log.exception("%s: C-STORE failed unexpectedly", code)
            return OUT_OF_RESOURCES
        metrics.INSTANCES_RECEIVED.labels(code).inc()
        metrics.BYTES_RECEIVED.labels(code).inc(len(data))
        return SUCCESS
