"""Query/retrieve towards one archive with pynetdicom (C-FIND, C-MOVE and C-GET, Study Root).

Every association goes through the archive's ``Associations`` limit, and pynetdicom's outcomes
are translated at this edge (STYLE 2): a refused or dropped association, or a failure status,
is a ``TransientError`` (retried later with backoff, the reason kept); nothing here logs or
raises a value from a dataset (patient IDs, UIDs).
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
)

from producers.receiver.pynetdicom_compat import RejectionWatch
from producers.receiver.scp import TRANSFER_SYNTAXES
from smartbox.errors import SmartboxError, TransientError
from smartbox.retry import call_with_retry

from .config import Archive, ReceiverTarget
from .forward import GET_MODEL, MAX_CONTEXTS, Forwarder, storage_contexts
from .limits import Associations
from .state import FAILURE_REASONS

PENDING = (0xFF00, 0xFF01)


class _Unreachable(TransientError):
    """No association: the archive did not answer (retried by tenacity)."""


class RetrieveError(SmartboxError):
    """An archive did not do what was asked; ``reason`` is one of ``state.FAILURE_REASONS``.
    Retried by the runner later (backoff kept in the cohort database), not on the spot."""

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in FAILURE_REASONS:
            raise ValueError(f"unknown failure reason {reason!r}")
        super().__init__(f"{reason}{': ' + detail if detail else ''}")
        self.reason = reason


@dataclass(frozen=True, repr=False)
class FoundStudy:
    """One STUDY-level C-FIND answer (identifying: kept in the cohort database only)."""

    study_uid: str
    modalities: tuple[str, ...]
    description: str
    instances: int | None


@dataclass(frozen=True)
class MoveResult:
    completed: int
    failed: int
    warning: int
    status: int


def _da(day: date) -> str:
    return day.strftime("%Y%m%d")


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


#: the storage SOP classes a C-GET association offers to receive (pynetdicom's common 120,
#: which fit in one association with the C-GET model's context)
GET_SOP_CLASSES = tuple(str(cx.abstract_syntax) for cx in StoragePresentationContexts)


class ArchiveClient:
    """C-FIND, and C-MOVE or C-GET, towards one archive as ``calling_ae``; with C-GET the
    instances are passed on to ``receiver`` (``forward``)."""

    def __init__(
        self,
        archive: Archive,
        calling_ae: str,
        associations: Associations,
        *,
        receiver: ReceiverTarget | None = None,
        connect_retry_seconds: float = 30.0,
    ) -> None:
        self.connect_retry_seconds = connect_retry_seconds
        self.archive = archive
        self.calling_ae = calling_ae
        self.associations = associations
        self.receiver = receiver

    def _ae(self, *, get: bool = False) -> tuple[AE, list[Any]]:
        """The AE for an association, and the role selections it proposes (C-GET)."""
        ae = AE(ae_title=self.calling_ae)
        roles: list[Any] = []
        if get:  # a C-GET association carries only the C-GET and the storage contexts
            ae.add_requested_context(GET_MODEL)
            room = MAX_CONTEXTS - len(ae.requested_contexts)
            contexts, roles = storage_contexts(GET_SOP_CLASSES, list(TRANSFER_SYNTAXES), room)
            for cx in contexts:
                ae.add_requested_context(str(cx.abstract_syntax), cx.transfer_syntax)
        else:
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        timeout = self.archive.network_timeout_seconds
        ae.acse_timeout = ae.network_timeout = ae.connection_timeout = timeout
        ae.dimse_timeout = timeout
        return ae, roles

    def _tls(self) -> tuple[ssl.SSLContext, str] | None:
        tls = self.archive.tls
        if tls is None:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca_file)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if tls.cert_file and tls.key_file:
            ctx.load_cert_chain(tls.cert_file, tls.key_file)
        return ctx, self.archive.host

    def _open(self, forwarder: Forwarder | None = None) -> Any:
        ae, roles = self._ae(get=forwarder is not None)
        watch = RejectionWatch()
        extra: dict[str, Any] = {"evt_handlers": [watch.handler]}
        if forwarder is not None:
            extra["ext_neg"] = roles  # SCP role: the archive's C-STOREs come to us
            extra["evt_handlers"].append((evt.EVT_C_STORE, forwarder.handle_store))
        try:
            assoc = ae.associate(
                self.archive.host,
                self.archive.port,
                ae_title=self.archive.ae_title,
                tls_args=self._tls(),
                **extra,
            )
        except (OSError, ssl.SSLError) as exc:
            raise _Unreachable(exc.__class__.__name__) from None
        if assoc.is_rejected or watch.rejection is not None:
            raise RetrieveError("association_rejected")
        if not assoc.is_established:
            raise _Unreachable("not established")
        return assoc

    @contextmanager
    def association(self, forwarder: Forwarder | None = None) -> Iterator[Any]:
        """An association to the archive, within its limit; released (or aborted) after.

        An archive that does not answer (restarting, a network blip) is tried again with
        backoff for ``connect_retry_seconds`` (tenacity) before the attempt counts as failed;
        a rejection is not retried here (the trust file or the archive's config is wrong)."""
        with self.associations:
            try:
                assoc = call_with_retry(
                    lambda: self._open(forwarder),
                    what=f"{self.archive.name}: associate",
                    max_seconds=self.connect_retry_seconds,
                    initial=0.5,
                    max_wait=5.0,
                )
            except _Unreachable as exc:
                raise RetrieveError("association_failed", str(exc)) from None
            try:
                yield assoc
            finally:
                if assoc.is_established:
                    assoc.release()
                else:
                    assoc.abort()

    def _run(
        self, assoc: Any, gen: Iterator[tuple[Dataset, Dataset | None]]
    ) -> Iterator[tuple[int, Dataset, Dataset | None]]:
        for status, identifier in gen:
            code = _int(getattr(status, "Status", None))
            if code is None:  # an aborted association, a timeout: pynetdicom's empty status
                raise RetrieveError("association_failed", "no response")
            yield code, status, identifier

    def find_studies(self, attribute: str, value: str, start: date, end: date) -> list[FoundStudy]:
        """Every study of a patient (``attribute`` = ``value``: PatientID, or the trust's NHS
        number attribute) within a date range (STUDY level); the modality filter is applied
        by the caller, as archives differ in how they match ModalitiesInStudy."""
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        setattr(query, attribute, value)
        query.StudyDate = f"{_da(start)}-{_da(end)}"
        query.StudyInstanceUID = ""
        query.ModalitiesInStudy = ""
        query.StudyDescription = ""
        query.NumberOfStudyRelatedInstances = ""
        found: list[FoundStudy] = []
        with self.association() as assoc:
            model = StudyRootQueryRetrieveInformationModelFind
            for code, _status, identifier in self._run(assoc, assoc.send_c_find(query, model)):
                if code in PENDING and identifier is not None:
                    uid = str(identifier.get("StudyInstanceUID", "") or "").strip()
                    if not uid:
                        continue
                    mods = identifier.get("ModalitiesInStudy", "") or ""
                    if isinstance(mods, str):
                        mods = [m for m in mods.split("\\") if m]
                    found.append(
                        FoundStudy(
                            uid,
                            tuple(str(m).strip().upper() for m in mods),
                            str(identifier.get("StudyDescription", "") or ""),
                            _int(identifier.get("NumberOfStudyRelatedInstances")),
                        )
                    )
                elif code != 0x0000:
                    raise RetrieveError("query_failed", f"status 0x{code:04X}")
        return found

    def find_below(self, level: str, study_uid: str, keys: tuple[str, ...]) -> list[Dataset]:
        """SERIES or IMAGE level answers within one study (``keys`` returned)."""
        query = Dataset()
        query.QueryRetrieveLevel = level
        query.StudyInstanceUID = study_uid
        for key in keys:
            setattr(query, key, "")
        out: list[Dataset] = []
        with self.association() as assoc:
            model = StudyRootQueryRetrieveInformationModelFind
            for code, _status, identifier in self._run(assoc, assoc.send_c_find(query, model)):
                if code in PENDING and identifier is not None:
                    out.append(identifier)
                elif code != 0x0000:
                    raise RetrieveError("query_failed", f"status 0x{code:04X}")
        return out

    def retrieve(
        self, destination: str, study_uid: str, sop_uids: list[str] | None = None
    ) -> MoveResult:
        """The study (or, with ``sop_uids``, those instances) to the trust's receiver by the
        archive's ``method``: C-MOVE to ``destination``, or C-GET passed on to ``receiver``."""
        if self.archive.method == "C-GET":
            return self.get(study_uid, sop_uids)
        return self.move(destination, study_uid, sop_uids)

    @staticmethod
    def _queries(study_uid: str, sop_uids: list[str] | None) -> list[Dataset]:
        """STUDY level, or IMAGE level one per instance (not every archive takes a list)."""
        queries = []
        targets: list[str | None] = list(sop_uids) if sop_uids else [None]
        for sop_uid in targets:
            query = Dataset()
            query.StudyInstanceUID = study_uid
            query.QueryRetrieveLevel = "STUDY" if sop_uid is None else "IMAGE"
            if sop_uid is not None:
                query.SOPInstanceUID = sop_uid
            queries.append(query)
        return queries

    def _collect(self, assoc: Any, requests: Iterator[Iterator[Any]]) -> MoveResult:
        """The sums of the final responses' sub-operation counts (C-MOVE and C-GET alike)."""
        total = MoveResult(0, 0, 0, 0x0000)
        for gen in requests:
            last: Dataset | None = None
            for code, status, _identifier in self._run(assoc, gen):
                last = status
                if code not in PENDING:
                    break
            if last is None:
                raise RetrieveError("move_failed", "no response")
            code = int(last.Status)
            total = MoveResult(
                total.completed + (_int(last.get("NumberOfCompletedSuboperations")) or 0),
                total.failed + (_int(last.get("NumberOfFailedSuboperations")) or 0),
                total.warning + (_int(last.get("NumberOfWarningSuboperations")) or 0),
                code if total.status == 0x0000 else total.status,
            )
        return total

    def move(
        self, destination: str, study_uid: str, sop_uids: list[str] | None = None
    ) -> MoveResult:
        """C-MOVE a study to ``destination``; or, with ``sop_uids``, just those instances
        (IMAGE level, one C-MOVE each on one association)."""
        queries = self._queries(study_uid, sop_uids)
        with self.association() as assoc:
            model = StudyRootQueryRetrieveInformationModelMove
            return self._collect(assoc, (assoc.send_c_move(q, destination, model) for q in queries))

    def get(self, study_uid: str, sop_uids: list[str] | None = None) -> MoveResult:
        """C-GET a study (or those instances, IMAGE level, one C-GET each); every C-STORE
        sub-operation is passed on to the receiver and answered with its status (``forward``).
        The counts are the archive's; an instance the receiver did not take is a failed
        sub-operation."""
        if self.receiver is None:
            raise ValueError("C-GET needs the receiver to pass instances on to")
        timeout = self.archive.network_timeout_seconds
        forwarder = Forwarder(self.receiver, self.calling_ae, timeout)
        queries = self._queries(study_uid, sop_uids)

        def receiver_up() -> None:
            if not forwarder.echo():
                raise _Unreachable("receiver")

        try:
            call_with_retry(
                receiver_up,
                what=f"{self.archive.name}: the trust's receiver",
                max_seconds=self.connect_retry_seconds,
                initial=0.5,
                max_wait=5.0,
            )
        except _Unreachable:
            raise RetrieveError("association_failed", "the trust's receiver") from None
        try:
            with self.association(forwarder) as assoc:
                storage = [
                    cx for cx in assoc.accepted_contexts if cx.abstract_syntax in GET_SOP_CLASSES
                ]
                if not forwarder.open(storage):
                    raise RetrieveError("association_failed", "the trust's receiver")

                def requests() -> Iterator[Iterator[Any]]:
                    for n, query in enumerate(queries, start=1):
                        forwarder.originator_id = n
                        yield assoc.send_c_get(query, GET_MODEL, msg_id=n)

                return self._collect(assoc, requests())
        finally:
            forwarder.close()
