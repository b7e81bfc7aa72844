"""The receiver's A-ASSOCIATE handling as it was through pynetdicom 3.0's internals (decode
the RQ, ``negotiate_as_acceptor``, encode the AC): the reference ``producers/receiver/associate.py``
is held to, byte for byte, and the "before" of its micro-benchmark. Test-only; the names used
are listed in ``pynetdicom_compat.USED_INTERNALS`` (so the version-range check covers them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from pydicom.uid import UID
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext, build_context, negotiate_as_acceptor

from producers.receiver.status import Rejection

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"


def supported_contexts(supported: list[tuple[str, list[str]]]) -> list[PresentationContext]:
    """The acceptor's contexts as pynetdicom objects (what ``scp.py`` used to build)."""
    return [
        build_context(UID(abstract), [UID(ts) for ts in ts_list]) for abstract, ts_list in supported
    ]


@dataclass(frozen=True)
class AssociateRequest:
    """What the receiver reads from an A-ASSOCIATE-RQ (and the decoded primitive, to answer)."""

    protocol_version: int
    application_context: str
    calling_ae: str
    called_ae: str
    primitive: A_ASSOCIATE


def decode_associate_rq(pdu: bytes) -> AssociateRequest:
    """Decode a whole A-ASSOCIATE-RQ PDU (header included); ValueError if it cannot be."""
    rq = A_ASSOCIATE_RQ()
    try:
        rq.decode(pdu)
        primitive = rq.to_primitive()
        return AssociateRequest(
            protocol_version=int(rq.protocol_version),
            application_context=str(primitive.application_context_name),
            calling_ae=str(primitive.calling_ae_title).strip(),
            called_ae=str(primitive.called_ae_title).strip(),
            primitive=primitive,
        )
    except Exception as exc:  # noqa: BLE001 - any failure here is the peer's malformed PDU
        raise ValueError(f"undecodable A-ASSOCIATE-RQ ({type(exc).__name__})") from exc


def encode_associate_rj(rejection: Rejection) -> bytes:
    """An A-ASSOCIATE-RJ PDU."""
    primitive = A_ASSOCIATE()
    primitive.result, primitive.result_source, primitive.diagnostic = rejection
    pdu = A_ASSOCIATE_RJ()
    pdu.from_primitive(primitive)
    return cast(bytes, pdu.encode())


def encode_associate_ac(
    request: AssociateRequest,
    supported: list[PresentationContext],
    *,
    max_pdu: int,
    implementation_uid: str,
    implementation_version: str,
) -> tuple[bytes, dict[int, tuple[str, str]], int]:
    """Negotiate contexts and roles; the A-ASSOCIATE-AC PDU, the accepted contexts
    (id -> (abstract syntax, transfer syntax)) and the peer's maximum PDU length (0: none)."""
    rq = request.primitive
    roles = {
        UID(item.sop_class_uid): (item.scu_role, item.scp_role)
        for item in rq.user_information
        if isinstance(item, SCP_SCU_RoleSelectionNegotiation) and item.sop_class_uid
    }
    results, role_items = negotiate_as_acceptor(
        rq.presentation_context_definition_list, supported, roles
    )
    contexts = {
        int(cx.context_id or 0): (str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
        for cx in results
        if cx.result == 0x00
    }
    ac = A_ASSOCIATE()
    ac.application_context_name = APPLICATION_CONTEXT
    ac.calling_ae_title = rq.calling_ae_title
    ac.called_ae_title = rq.called_ae_title
    ac.result, ac.result_source = 0x00, 0x01
    ac.presentation_context_definition_results_list = results
    length = MaximumLengthNotification()
    length.maximum_length_received = max_pdu
    uid = ImplementationClassUIDNotification()
    uid.implementation_class_uid = UID(implementation_uid)
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = implementation_version
    ac.user_information = [length, uid, version, *role_items]
    pdu = A_ASSOCIATE_AC()
    pdu.from_primitive(ac)
    return cast(bytes, pdu.encode()), contexts, int(rq.maximum_length_received or 0)
