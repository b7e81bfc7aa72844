"""Query/retrieve towards one archive with pynetdicom (C-FIND and C-MOVE, Study Root).

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
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
)

from smartbox.errors import SmartboxError, TransientError
from smartbox.retry import call_with_retry

from .config import Archive
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


class ArchiveClient:
    """C-FIND and C-MOVE towards one archive as ``calling_ae``."""

    def __init__(
        self,
        archive: Archive,
        calling_ae: str,
        associations: Associations,
        *,
        connect_retry_seconds: float = 30.0,
    ) -> None:
        self.connect_retry_seconds = connect_retry_seconds
        self.archive = archive
        self.calling_ae = calling_ae
        self.associations = associations

    def _ae(self) -> AE:
        ae = AE(ae_title=self.calling_ae)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        timeout = self.archive.network_timeout_seconds
        ae.acse_timeout = ae.network_timeout = ae.connection_timeout = timeout
        ae.dimse_timeout = timeout
        return ae

    def _tls(self) -> tuple[ssl.SSLContext, str] | None:
        tls = self.archive.tls
        if tls is None:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca_file)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if tls.cert_file and tls.key_file:
            ctx.load_cert_chain(tls.cert_file, tls.key_file)
        return ctx, self.archive.host

    def _open(self) -> Any:
        try:
            assoc = self._ae().associate(
                self.archive.host,
                self.archive.port,
                ae_title=self.archive.ae_title,
                tls_args=self._tls(),
            )
        except (OSError, ssl.SSLError) as exc:
            raise _Unreachable(exc.__class__.__name__) from None
        if assoc.is_rejected:
            raise RetrieveError("association_rejected")
        if not assoc.is_established:
            raise _Unreachable("not established")
        return assoc

    @contextmanager
    def association(self) -> Iterator[Any]:
        """An association to the archive, within its limit; released (or aborted) after.

        An archive that does not answer (restarting, a network blip) is tried again with
        backoff for ``connect_retry_seconds`` (tenacity) before the attempt counts as failed;
        a rejection is not retried here (the trust file or the archive's config is wrong)."""
        with self.associations:
            try:
                assoc = call_with_retry(
                    self._open,
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

    def find_studies(self, patient_id: str, start: date, end: date) -> list[FoundStudy]:
        """Every study of a patient within a date range (STUDY level); the modality filter
        is applied by the caller, as archives differ in how they match ModalitiesInStudy."""
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.PatientID = patient_id
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

    def move(
        self, destination: str, study_uid: str, sop_uids: list[str] | None = None
    ) -> MoveResult:
        """C-MOVE a study to ``destination``; or, with ``sop_uids``, just those instances
        (IMAGE level, one C-MOVE each on one association: not every archive takes a list)."""
        queries = []
        targets: list[str | None] = list(sop_uids) if sop_uids else [None]
        for sop_uid in targets:
            query = Dataset()
            query.StudyInstanceUID = study_uid
            query.QueryRetrieveLevel = "STUDY" if sop_uid is None else "IMAGE"
            if sop_uid is not None:
                query.SOPInstanceUID = sop_uid
            queries.append(query)
        total = MoveResult(0, 0, 0, 0x0000)
        with self.association() as assoc:
            model = StudyRootQueryRetrieveInformationModelMove
            for query in queries:
                last: Dataset | None = None
                gen = assoc.send_c_move(query, destination, model)
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
