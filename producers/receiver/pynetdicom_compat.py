"""The one module that uses pynetdicom in the receiver: its list of storage SOP classes (and,
for the SCUs that use pynetdicom as requestor, a reliable view of an A-ASSOCIATE-RJ).

The receiver's upper layer (``ul.py``) and A-ASSOCIATE handling (``associate.py``) are our own;
pynetdicom 3.0's decoding, negotiation and encoding are the reference they are tested against
(``tests/helpers/pynetdicom_reference.py``, through its internal classes). Which SOP classes we
accept comes from ``pynetdicom.presentation.AllStoragePresentationContexts``, and that list
changes between minor releases, as do the internals the reference uses. So the version range
both were checked against is declared here, pinned in ``pyproject.toml`` and asserted by
``tests/unit/test_receiver_compat.py``; importing this module with a version outside it fails
at start-up rather than with a silently different set of accepted SOP classes.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

from pynetdicom import evt
from pynetdicom.pdu import A_ASSOCIATE_RJ
from pynetdicom.presentation import AllStoragePresentationContexts

#: the pynetdicom releases this module was written and tested against: [lowest, below)
SUPPORTED_RANGE: tuple[tuple[int, int], tuple[int, int]] = ((3, 0), (3, 1))
#: pynetdicom module -> the names used from it, here and by the tests' reference path
#: (the test checks each one exists)
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

__all__ = ["storage_sop_classes"]


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


def storage_sop_classes() -> list[str]:
    """Every standard storage SOP class UID pynetdicom knows, in its order."""
    return [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts]


class RejectionWatch:
    """The A-ASSOCIATE-RJ a pynetdicom requestor received, as (result, source, diagnostic).

    pynetdicom 3.0's requestor can report a fast rejection as an abort: its ACSE thread looks
    at the transport only after its DUL thread has connected, sent the A-ASSOCIATE-RQ,
    received the RJ and closed the connection, so it sees "not connected" and aborts
    (``is_rejected`` stays False). The PDU-received event is raised by the DUL thread itself,
    before it closes anything: pass ``watch.handler`` in ``evt_handlers`` and read
    ``watch.rejection`` once ``associate()`` returns."""

    def __init__(self) -> None:
        self.rejection: tuple[int, int, int] | None = None

    @property
    def handler(self) -> tuple[Any, Any]:
        return (evt.EVT_PDU_RECV, self._on_pdu)

    def _on_pdu(self, event: Any) -> None:
        pdu = event.pdu
        if isinstance(pdu, A_ASSOCIATE_RJ):
            self.rejection = (pdu.result or 0, pdu.source or 0, pdu.reason_diagnostic or 0)
