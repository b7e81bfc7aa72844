"""C-GET: the archive sends the study back over our own association, and each of its C-STORE
sub-operations is passed on to the trust's receiver before it is answered.

So a C-GET study follows exactly the path of a C-MOVE one: the receiver spools it, writes its
ledger, and quarantines and announces it marked ``retrieved`` (backfill), because every
C-STORE we forward carries a Move Originator AE Title (our ``calling_ae``) and Message ID
(the C-GET's), as an archive's C-MOVE sub-operation does. The archive's sub-operation is
answered with the receiver's own status: Success only once the receiver has made the instance
durable (it answers after fsync), a failure otherwise, so the archive counts it failed and the
runner later asks again for the instances the receiver's ledger still lacks.

One association to the receiver is kept open per C-GET association, proposing exactly the
(SOP class, transfer syntax) pairs the archive accepted, so an instance is sent on in the
transfer syntax it arrived in: pydicom decodes it lazily and writes the untouched elements
back as their raw bytes (no transcoding, no re-encoding of values).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from pynetdicom import AE, build_context, build_role
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelGet,
    Verification,
)

from .config import ReceiverTarget

#: pynetdicom's ``PresentationContext`` (what ``build_context`` returns and an association
#: lists as accepted): typed loosely, its module being one the receiver's compat layer owns
PresentationContext = Any

log = logging.getLogger("producers.retrieve")

SUCCESS = 0x0000
#: a C-STORE failure status (PS3.4 B.2.3): the receiver could not be reached or did not answer
OUT_OF_RESOURCES = 0xA700
#: at most 128 presentation contexts in an association (PS3.8 9.3.2.2: odd ids 1-255)
MAX_CONTEXTS = 128
GET_MODEL = StudyRootQueryRetrieveInformationModelGet
VERIFICATION = Verification


def storage_contexts(
    sop_classes: Iterable[str], transfer_syntaxes: list[str], room: int
) -> tuple[list[PresentationContext], list[Any]]:
    """The storage contexts, and their SCP role selections, a C-GET association proposes: one
    per SOP class, at most ``room`` (what the 128-context limit leaves)."""
    contexts: list[PresentationContext] = []
    roles: list[Any] = []
    for uid in sop_classes:
        if len(contexts) >= room:
            break
        contexts.append(build_context(uid, list(transfer_syntaxes)))
        roles.append(build_role(uid, scp_role=True))
    return contexts, roles


class Forwarder:
    """Passes the C-STORE sub-operations of one C-GET association on to the receiver."""

    def __init__(self, target: ReceiverTarget, calling_ae: str, timeout: float) -> None:
        self.target = target
        self.calling_ae = calling_ae
        self.timeout = timeout
        self.originator_id = 1  # the message id of the C-GET under way
        self.forwarded = 0
        self.failed = 0
        self._assoc: Any = None

    def _ae(self) -> AE:
        ae = AE(ae_title=self.calling_ae)
        ae.acse_timeout = ae.network_timeout = ae.connection_timeout = self.timeout
        ae.dimse_timeout = self.timeout
        return ae

    def _associate(self, ae: AE) -> Any:
        """An established association to the receiver, or None if it cannot be reached."""
        try:
            assoc = ae.associate(self.target.host, self.target.port, ae_title=self.target.ae_title)
        except OSError:
            return None
        return assoc if assoc.is_established else None

    def echo(self) -> bool:
        """Whether the receiver answers a C-ECHO: asked before the archive is, so a receiver
        being restarted costs a wait, not a C-GET whose every instance fails."""
        ae = self._ae()
        ae.add_requested_context(VERIFICATION)
        assoc = self._associate(ae)
        if assoc is None:
            return False
        try:
            status = assoc.send_c_echo()
            return status is not None and int(status.get("Status", -1)) == SUCCESS
        finally:
            if assoc.is_established:
                assoc.release()

    def open(self, accepted: Iterable[PresentationContext]) -> bool:
        """An association to the receiver with the storage contexts the archive accepted as
        (SOP class, transfer syntax) pairs; False if the receiver cannot be reached."""
        ae = self._ae()
        for cx in accepted:
            uid = cx.abstract_syntax
            if uid is None or uid == GET_MODEL or not cx.transfer_syntax:
                continue
            if len(ae.requested_contexts) < MAX_CONTEXTS:
                ae.add_requested_context(uid, [cx.transfer_syntax[0]])
        if not ae.requested_contexts:
            return False
        self._assoc = self._associate(ae)
        return self._assoc is not None

    def close(self) -> None:
        assoc, self._assoc = self._assoc, None
        if assoc is None:
            return
        if assoc.is_established:
            assoc.release()
        else:
            assoc.abort()

    def handle_store(self, event: Any) -> int:
        """pynetdicom's EVT_C_STORE handler on the C-GET association: the receiver's status.
        Never raises (STYLE 3); logs no value from the dataset."""
        status = self._forward(event)
        if status == SUCCESS:
            self.forwarded += 1
        else:
            self.failed += 1
        return status

    def _forward(self, event: Any) -> int:
        assoc = self._assoc
        if assoc is None or not assoc.is_established:
            return OUT_OF_RESOURCES
        try:
            dataset = event.dataset
            dataset.file_meta = event.file_meta  # the transfer syntax it arrived in
            answer = assoc.send_c_store(
                dataset,
                msg_id=event.request.MessageID,
                originator_aet=self.calling_ae,
                originator_id=self.originator_id,
            )
        except Exception as exc:  # noqa: BLE001 - a handler never raises (STYLE 3)
            # an undecodable dataset, no context for it, or the receiver gone
            log.warning("C-GET: an instance could not be passed on (%s)", type(exc).__name__)
            return OUT_OF_RESOURCES
        code = answer.get("Status") if answer is not None else None
        if code is None:  # no answer: the association to the receiver dropped or timed out
            log.warning("C-GET: the receiver did not answer a C-STORE")
            return OUT_OF_RESOURCES
        code = int(code)
        if code == SUCCESS or _is_failure(code):
            return code
        return OUT_OF_RESOURCES  # a warning or an unknown status: not known durable


def _is_failure(code: int) -> bool:
    """A C-STORE failure status (PS3.7 C.4, PS3.4 B.2.3): 01xx/02xx, Axxx, Cxxx."""
    return 0x0100 <= code <= 0x02FF or 0xA000 <= code <= 0xAFFF or 0xC000 <= code <= 0xCFFF
