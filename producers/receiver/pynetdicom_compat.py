"""The one module that uses pynetdicom's internals: A-ASSOCIATE decoding and encoding, and
presentation-context and role negotiation.

The receiver's upper layer (``ul.py``) is our own; pynetdicom still does what it does well,
but through classes that are not its public API (``pynetdicom.pdu``, ``pdu_primitives``,
``presentation``). They may change in any minor release, so the version range they were
checked against is declared here, pinned in ``pyproject.toml`` and asserted by
``tests/unit/test_receiver_compat.py``; importing this module with a version outside it fails
at start-up rather than mid-association.
"""

from __future__ import annotations

import importlib.metadata
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
from pynetdicom.presentation import (
    AllStoragePresentationContexts,
    PresentationContext,
    build_context,
    negotiate_as_acceptor,
)

from .status import Rejection

#: the pynetdicom releases this module was written and tested against: [lowest, below)
SUPPORTED_RANGE: tuple[tuple[int, int], tuple[int, int]] = ((3, 0), (3, 1))
#: pynetdicom module -> the names used from it (the test checks each one exists)
USED_INTERNALS: dict[str, tuple[str, ...]] = {
    "pynetdicom.pdu": ("A_ASSOCIATE_AC", "A_ASSOCIATE_RJ", "A_ASSOCIATE_RQ"),
    "pynetdicom.pdu_primitives": (
        "A_ASSOCIATE",
        "ImplementationClassUIDNotification",
        "ImplementationVersionNameNotification",
        "MaximumLengthNotification",
        "SCP_SCU_RoleSelectionNegotiation",
    ),
    "pynetdicom.presentation": (
        "AllStoragePresentationContexts",
        "PresentationContext",
        "build_context",
        "negotiate_as_acceptor",
    ),
}
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"

__all__ = [
    "AllStoragePresentationContexts",
    "AssociateRequest",
    "PresentationContext",
    "build_context",
    "decode_associate_rq",
    "encode_associate_ac",
    "encode_associate_rj",
]


def installed_version() -> tuple[int, ...]:
    """pynetdicom's installed version as numbers (``3.0.4`` -> ``(3, 0, 4)``)."""
    raw = importlib.metadata.version("pynetdicom")
    return tuple(int(part) for part in raw.split(".")[:3] if part.isdigit())


def version_supported(version: tuple[int, ...]) -> bool:
    """Whether ``version`` lies in ``SUPPORTED_RANGE``."""
    lowest, below = SUPPORTED_RANGE
    return lowest <= version[:2] < below


if not version_supported(installed_version()):
    raise ImportError(
        f"pynetdicom {'.'.join(map(str, installed_version()))} is outside the range the "
        f"receiver was tested with ({SUPPORTED_RANGE}); install the version pyproject.toml pins"
    )


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
