"""One trust's storage SCP: who may associate, what we store, and what each C-STORE is
answered. The protocol itself is in ``ul.py`` (upper layer) and ``dimse.py`` (messages).

Failures become DICOM status codes here; ``store`` never raises. An instance is answered
Success only after ``Spool.accept`` returned: the bytes as received (never decoded, never
re-encoded) are fdatasync'd, renamed into place, the directory fsync'd and the ledger row
committed. Access control (source address, called and calling AE title) happens when the
A-ASSOCIATE-RQ arrives, with the matching A-ASSOCIATE-RJ reason; TLS, when configured, before.

The listening socket is made by the caller (``ReceiverService``) and may be shared by several
worker processes (pre-fork): each runs one ``StoreSCP`` that accepts from it.
"""

from __future__ import annotations

import logging
import re
import socket
import ssl
import time
from pathlib import Path

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

from smartbox import metrics
from smartbox.canary import is_probe_uid
from smartbox.inflate import InflateLimitExceeded, InflateLimits
from smartbox.keys import RegionalKey
from smartbox.trusts import TlsConfig, TrustConfig

from . import dimse, intake
from .associate import Acceptor, AssociateRequest
from .dimse import Command
from .intake import SpoolTempFile
from .listener import Listener
from .pynetdicom_compat import storage_sop_classes
from .spool import Spool, SpoolFull
from .status import (
    CANNOT_UNDERSTAND,
    OUT_OF_RESOURCES,
    REJECTIONS,
    SUCCESS,
    Rejection,
    association_result,
    status_label,
)
from .ul import Limits

log = logging.getLogger(__name__)

VERIFICATION = "1.2.840.10008.1.1"
# Explicit VR Little Endian first: with both offered in one context, the first we list wins
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
# what Verification is accepted with (pynetdicom's default list, as before)
VERIFICATION_SYNTAXES = [
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
]
_MODALITY_RE = re.compile(r"^[A-Z0-9_]{1,16}$")


def supported_contexts() -> list[tuple[str, list[str]]]:
    """Every standard storage SOP class with our transfer syntaxes, and Verification:
    (abstract syntax, transfer syntaxes in order of preference)."""
    syntaxes = [str(ts) for ts in TRANSFER_SYNTAXES]
    contexts = [(sop_class, syntaxes) for sop_class in storage_sop_classes()]
    return [*contexts, (VERIFICATION, [str(ts) for ts in VERIFICATION_SYNTAXES])]


def acceptor_for(trust: TrustConfig) -> Acceptor:
    """One trust's A-ASSOCIATE acceptor (with its negotiation cache)."""
    return Acceptor(
        supported_contexts(),
        max_pdu=trust.max_pdu,
        implementation_uid=dimse.IMPLEMENTATION_UID,
        implementation_version=dimse.IMPLEMENTATION_VERSION,
    )


def limits_for(trust: TrustConfig) -> Limits:
    """The deadlines and connection caps of one SCP process, from the trust file."""
    return Limits(
        artim_seconds=trust.artim_seconds,
        network_timeout_seconds=trust.network_timeout_seconds,
        max_associations=trust.max_associations,
        max_pending=trust.max_pending_associations,
        max_pending_per_address=trust.max_pending_per_address,
    )


def study_key_for(key: RegionalKey, trust: str, study_uid: str) -> str:
    return key.opaque_id("study-key", f"{trust}:{study_uid}")


def instance_key_for(key: RegionalKey, trust: str, sop_uid: str) -> str:
    return key.opaque_id("instance-key", f"{trust}:{sop_uid}")


def tls_context(tls: TlsConfig) -> ssl.SSLContext:
    """Server-side TLS (1.2 or later); client certificates required if ``verify_client``."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=tls.ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(tls.cert_file, tls.key_file)
    ctx.verify_mode = ssl.CERT_REQUIRED if tls.verify_client else ssl.CERT_NONE
    return ctx


class StoreSCP:
    """One trust's DICOM listener (in one process)."""

    def __init__(self, trust: TrustConfig, spool: Spool, key: RegionalKey) -> None:
        self.trust = trust
        self.spool = spool
        self.key = key
        self.max_pdu = trust.max_pdu
        self.acceptor = acceptor_for(trust)
        #: how long each stored instance's response is held back (s; ``pace.py``): set by
        #: the relay's pacing, in this process or through the worker's control socket
        self.pace = 0.0
        self.server: Listener | None = None
        self._study_keys: dict[str, str] = {}
        self._inflate_limits = InflateLimits(trust.max_inflated_bytes, trust.max_inflate_ratio)

    def start(self, listen_socket: socket.socket) -> tuple[str, int]:
        """Serve associations accepted from ``listen_socket`` (already listening)."""
        self.server = Listener(
            listen_socket,
            self,
            limits=limits_for(self.trust),
            tls=tls_context(self.trust.tls) if self.trust.tls else None,
            tls_failed=self.tls_failed,
        )
        self.server.start(f"scp-{self.trust.code}")
        host, port = listen_socket.getsockname()[:2]
        return str(host), int(port)

    def active_associations(self) -> int:
        return self.server.active() if self.server else 0

    def stop_accepting(self) -> None:
        if self.server is not None:
            self.server.stop_accepting()

    def stop(self, grace_seconds: float = 0.0) -> None:
        """Stop accepting; let associations in progress finish for ``grace_seconds``."""
        if self.server is not None:
            self.server.stop_accepting()
            self.server.drain(grace_seconds)

    # --- association events (association threads) ------------------------------------------
    def screen(self, request: AssociateRequest, address: str) -> Rejection | None:
        """None to accept, else the A-ASSOCIATE-RJ. The source address comes first: a peer
        outside ``allowed_networks`` learns nothing about the AE titles we would accept."""
        called, calling = request.called_ae, request.calling_ae
        allowed, why = self.trust.caller_allowed(calling, address)
        if not allowed and why == "source_address":
            reason = "source_address"
        elif called != self.trust.ae_title:
            reason = "called_ae"
        elif not allowed:
            reason = "calling_ae"
        else:
            return None
        self.rejected(reason)
        log.warning(
            "%s: association from %s rejected (%s): calling AE %r, called AE %r",
            self.trust.code,
            address,
            reason,
            calling,
            called,
        )
        return REJECTIONS[reason]

    def accepted(self) -> None:
        metrics.ASSOCIATIONS.labels(self.trust.code, "accepted").inc()

    def rejected(self, reason: str) -> None:
        metrics.ASSOCIATIONS.labels(self.trust.code, association_result(reason)).inc()

    def timed_out(self) -> None:
        metrics.FAILURES.labels(self.trust.code, "receive", "network_timeout").inc()

    def tls_failed(self, address: str, exc: OSError) -> None:
        self.rejected("tls")
        log.warning(
            "%s: TLS handshake from %s failed: %s", self.trust.code, address, type(exc).__name__
        )

    def new_file(self) -> SpoolTempFile:
        return SpoolTempFile(self.spool.tmp)

    # --- C-STORE (association threads) ---------------------------------------------------
    def store(self, command: Command, received: SpoolTempFile, calling_ae: str = "") -> int:
        """Keep one received instance durably; the C-STORE status. Never raises."""
        try:
            status = self._store(command, received, calling_ae)
        except Exception:  # noqa: BLE001 - the SCP must answer, never raise
            metrics.FAILURES.labels(self.trust.code, "receive", "unexpected").inc()
            log.exception("%s: C-STORE failed unexpectedly", self.trust.code)
            status = OUT_OF_RESOURCES
        metrics.CSTORE_STATUS.labels(self.trust.code, status_label(status)).inc()
        pace = self.pace
        if pace > 0 and status == SUCCESS:  # durable already: only the answer waits
            time.sleep(pace)
            metrics.PACED_SECONDS.labels(self.trust.code).inc(pace)
        return status

    def _store(self, command: Command, received: SpoolTempFile, calling_ae: str) -> int:
        code = self.trust.code
        if received.error is not None:
            return self._disk_failure(received.error)
        try:
            header = intake.read_header(received, self._inflate_limits)
        except InflateLimitExceeded:
            metrics.FAILURES.labels(code, "receive", "inflate_limit").inc()
            log.warning("%s: C-STORE refused: deflated dataset inflates beyond the limits", code)
            return OUT_OF_RESOURCES
        if header is None or not command.sop_instance:
            metrics.FAILURES.labels(code, "receive", "undecodable").inc()
            log.warning("%s: C-STORE refused: dataset cannot be decoded", code)
            return CANNOT_UNDERSTAND
        digest = received.sha256
        instance_key = instance_key_for(self.key, code, command.sop_instance)
        if self.spool.is_duplicate(instance_key, digest):
            metrics.DUPLICATES.labels(code, "identical").inc()
            return SUCCESS
        modality = header.modality if _MODALITY_RE.match(header.modality) else "OT"
        try:
            high_water = self.trust.spool_high_water_bytes
            if self.spool.pending_bytes() + received.size > high_water:
                raise SpoolFull("high-water mark reached")
            received.sync()
            new_version = self.spool.has_other_version(instance_key, digest)
            fresh = self.spool.accept(
                Path(received.name),
                study_key=self._study_key(header.study_uid),
                instance_key=instance_key,
                sha256=digest,
                size=received.size,
                modality=modality,
                high_water=high_water,
                calling_ae=calling_ae,
                move_originator=command.move_originator,
                acquired=header.acquired,
            )
            received.adopted = True
        except SpoolFull as exc:
            metrics.FAILURES.labels(code, "receive", "spool_full").inc()
            log.error("%s: spool at its high-water mark (%s): refusing", code, exc)
            return OUT_OF_RESOURCES
        except OSError as exc:
            return self._disk_failure(exc)
        if not fresh:
            metrics.DUPLICATES.labels(code, "identical").inc()
            return SUCCESS
        if new_version:
            metrics.DUPLICATES.labels(code, "new_version").inc()
        if is_probe_uid(header.study_uid):  # smartbox probe: not the trust's traffic
            metrics.PROBE_INSTANCES_RECEIVED.labels(code).inc()
            return SUCCESS
        metrics.INSTANCES_RECEIVED.labels(code).inc()
        metrics.BYTES_RECEIVED.labels(code).inc(received.size)
        return SUCCESS

    def _study_key(self, study_uid: str) -> str:
        key = self._study_keys.get(study_uid)
        if key is None:
            if len(self._study_keys) >= 4096:
                self._study_keys.clear()
            key = self._study_keys[study_uid] = study_key_for(self.key, self.trust.code, study_uid)
        return key

    def _disk_failure(self, exc: OSError) -> int:
        metrics.FAILURES.labels(self.trust.code, "receive", "disk").inc()
        log.error("%s: spool write failed: %s", self.trust.code, exc.strerror or exc)
        return OUT_OF_RESOURCES
