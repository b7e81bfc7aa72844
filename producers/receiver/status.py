"""Every status code and reject/abort reason the receiver sends, in one place.

C-STORE statuses (PS3.4 Annex B.2.3, PS3.7 Annex C), A-ASSOCIATE-RJ (result, source, reason)
triples (PS3.8 9.3.4, Table 9-21) and A-ABORT reasons (PS3.8 9.3.8, Table 9-26). The rest of the
receiver names these constants; a new status or reason is added here, nowhere else.
"""

from __future__ import annotations

from typing import Final, NamedTuple

# --- DIMSE statuses -----------------------------------------------------------------------
SUCCESS: Final = 0x0000
#: the spool is at its high-water mark, a write or fsync failed, or something unexpected
OUT_OF_RESOURCES: Final = 0xA700
#: the dataset cannot be decoded (no StudyInstanceUID can be read)
CANNOT_UNDERSTAND: Final = 0xC210
#: the C-STORE's SOP class is not the one its presentation context was negotiated for
SOP_CLASS_NOT_SUPPORTED: Final = 0x0122

#: every status the SCP answers, for metric labels (``0x%04X``)
CSTORE_STATUSES: Final = frozenset(
    {SUCCESS, OUT_OF_RESOURCES, CANNOT_UNDERSTAND, SOP_CLASS_NOT_SUPPORTED}
)


def status_label(status: int) -> str:
    """The ``status`` metric label of a C-STORE status (``0xA700``); ValueError if it is not
    one of ours (the vocabulary is closed)."""
    if status not in CSTORE_STATUSES:
        raise ValueError(f"not a C-STORE status the receiver answers: 0x{status:04X}")
    return f"0x{status:04X}"


# --- A-ASSOCIATE-RJ -----------------------------------------------------------------------
class Rejection(NamedTuple):
    """One A-ASSOCIATE-RJ: result, source and reason/diag. as PS3.8 Table 9-21 numbers them."""

    result: int
    source: int
    reason: int


RESULT_PERMANENT: Final = 0x01
RESULT_TRANSIENT: Final = 0x02
SOURCE_SERVICE_USER: Final = 0x01
SOURCE_PROVIDER_ACSE: Final = 0x02
SOURCE_PROVIDER_PRESENTATION: Final = 0x03

#: metric reason (``rejected_<reason>``) -> what the peer is told
REJECTIONS: Final[dict[str, Rejection]] = {
    # an address outside allowed_networks has no reason code of its own: "no reason given"
    "source_address": Rejection(RESULT_PERMANENT, SOURCE_SERVICE_USER, 0x01),
    "application_context": Rejection(RESULT_PERMANENT, SOURCE_SERVICE_USER, 0x02),
    "calling_ae": Rejection(RESULT_PERMANENT, SOURCE_SERVICE_USER, 0x03),
    "called_ae": Rejection(RESULT_PERMANENT, SOURCE_SERVICE_USER, 0x07),
    "protocol_version": Rejection(RESULT_PERMANENT, SOURCE_PROVIDER_ACSE, 0x02),
    # too many associations in this SCP process: try again later
    "busy": Rejection(RESULT_TRANSIENT, SOURCE_PROVIDER_PRESENTATION, 0x02),
}

# --- A-ABORT (source: service provider) -----------------------------------------------------
ABORT_NOT_SPECIFIED: Final = 0x00
ABORT_UNRECOGNISED_PDU: Final = 0x01
ABORT_UNEXPECTED_PDU: Final = 0x02
ABORT_INVALID_PARAMETER: Final = 0x06
ABORT_SOURCE_PROVIDER: Final = 0x02

# --- smartbox_associations_total{result} -----------------------------------------------------
#: reasons a connection ends without an association that no A-ASSOCIATE-RJ states
NO_ASSOCIATION_REASONS: Final = frozenset(
    {
        "tls",  # the TLS handshake failed
        "artim",  # no whole A-ASSOCIATE-RQ before the ARTIM deadline
        "pending_limit",  # closed to make room: too many connections not yet associated
        "pending_per_address",  # refused: too many not yet associated from that address
    }
)
ASSOCIATION_RESULTS: Final = frozenset(
    {"accepted"} | {f"rejected_{r}" for r in (*REJECTIONS, *NO_ASSOCIATION_REASONS)}
)


def association_result(reason: str) -> str:
    """The ``result`` label of a rejection reason (``rejected_<reason>``); ValueError if the
    reason is not in the vocabulary."""
    result = f"rejected_{reason}"
    if result not in ASSOCIATION_RESULTS:
        raise ValueError(f"not an association rejection reason: {reason!r}")
    return result
