"""Our A-ASSOCIATE-RQ parser, negotiation and AC/RJ encoders (``associate.py``) against the
pynetdicom path they replaced (``helpers/pynetdicom_reference.py``): the same AC bytes, the
same accepted contexts, the same peer maximum PDU, for real and random proposals; malformed
RQs are a ValueError (the upper layer's A-ABORT), never anything else."""

from __future__ import annotations

import random
import socket
import struct
import subprocess

import pytest
from helpers import pynetdicom_reference as reference
from pydicom.data import get_testdata_file
from pydicom.uid import UID
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext

from producers.receiver import associate, dimse, scp, status
from producers.receiver.associate import Acceptor, encode_associate_rj

MAX_PDU = 131072
SUPPORTED = scp.supported_contexts()
STORAGE = [abstract for abstract, _ts in SUPPORTED]
ODD_SYNTAXES = [
    "1.2.840.10008.1.2.4.201",  # HTJ2K lossless: not ours
    "1.2.826.0.1.3680043.9.9999.1.2",  # private
    "1.2.840.10008.1.2.1.99",  # deflated
    "1.2.840.10008.1.2.5",  # RLE
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
]
UNSUPPORTED = ["1.2.826.0.1.3680043.9.9999.77", "1.2.840.10008.5.1.4.1.2.2.1"]  # private; Q/R


def acceptor(**kwargs: int) -> Acceptor:
    return Acceptor(
        SUPPORTED,
        max_pdu=MAX_PDU,
        implementation_uid=dimse.IMPLEMENTATION_UID,
        implementation_version=dimse.IMPLEMENTATION_VERSION,
        **kwargs,
    )


REFERENCE_SUPPORTED = reference.supported_contexts(SUPPORTED)


def old_path(pdu: bytes) -> tuple[bytes, dict[int, tuple[str, str]], int]:
    request = reference.decode_associate_rq(pdu)
    return reference.encode_associate_ac(
        request,
        REFERENCE_SUPPORTED,
        max_pdu=MAX_PDU,
        implementation_uid=dimse.IMPLEMENTATION_UID,
        implementation_version=dimse.IMPLEMENTATION_VERSION,
    )


def new_path(ours: Acceptor, pdu: bytes) -> tuple[bytes, dict[int, tuple[str, str]], int]:
    request = ours.parse(pdu)
    ac, contexts = ours.accept(request)
    return ac, contexts, request.proposed.max_pdu


def rq_pdu(
    contexts: list[tuple[int, str, list[str]]],
    roles: list[tuple[str, bool, bool]] = (),  # type: ignore[assignment]
    *,
    calling: str = "SENDER",
    called: str = "SMARTBOX",
    max_pdu: int | None = 16384,
) -> bytes:
    """An A-ASSOCIATE-RQ encoded by pynetdicom, as its SCUs send it."""
    rq = A_ASSOCIATE()
    rq.application_context_name = reference.APPLICATION_CONTEXT
    rq.calling_ae_title, rq.called_ae_title = calling, called
    for context_id, abstract, syntaxes in contexts:
        cx = PresentationContext()
        cx.context_id, cx.abstract_syntax = context_id, UID(abstract)
        cx.transfer_syntax = [UID(ts) for ts in syntaxes]
        rq.presentation_context_definition_list.append(cx)
    info: list[object] = []
    if max_pdu is not None:
        length = MaximumLengthNotification()
        length.maximum_length_received = max_pdu
        info.append(length)
    uid = ImplementationClassUIDNotification()
    uid.implementation_class_uid = UID("1.2.826.0.1.3680043.9.3811.3.0.4")
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = "PYNETDICOM_304"
    info += [uid, version]
    for sop_class, scu_role, scp_role in roles:
        role = SCP_SCU_RoleSelectionNegotiation()
        role.sop_class_uid, role.scu_role, role.scp_role = UID(sop_class), scu_role, scp_role
        info.append(role)
    rq.user_information = info
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(rq)
    return bytes(pdu.encode())


@pytest.fixture(scope="module")
def storescu_rq() -> bytes:
    """The A-ASSOCIATE-RQ dcmtk's storescu sends for one file (its default ~128 contexts)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        cmd = ["/usr/bin/storescu", "-aet", "DCMTK_SCU", "-aec", "SMARTBOX", "127.0.0.1"]
        cmd += [str(server.getsockname()[1]), get_testdata_file("CT_small.dcm")]
        sender = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            conn, _ = server.accept()
            with conn:
                conn.settimeout(30)
                pdu = b""
                while len(pdu) < 6 or len(pdu) < 6 + struct.unpack_from(">I", pdu, 2)[0]:
                    chunk = conn.recv(65536)
                    assert chunk
                    pdu += chunk
                conn.sendall(b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00")  # A-ABORT
        finally:
            sender.wait(30)
    return pdu


def random_proposal(rng: random.Random) -> tuple[list[tuple[int, str, list[str]]], list]:
    contexts = []
    for n in range(rng.randint(1, 128)):
        abstract = rng.choice(STORAGE) if rng.random() < 0.8 else rng.choice(UNSUPPORTED)
        syntaxes = rng.sample(ODD_SYNTAXES, rng.randint(1, 4))
        context_id = 2 * n + 1 if rng.random() < 0.9 else 2 * rng.randint(0, n) + 1  # duplicates
        contexts.append((context_id, abstract, syntaxes))
    roles = [
        (rng.choice(STORAGE), *rng.choice([(True, True), (True, False), (False, True)]))
        for _ in range(rng.randint(0, 3))
    ]
    return contexts, roles


def test_storescu_default_proposal_is_answered_as_pynetdicom_did(storescu_rq: bytes) -> None:
    ours = acceptor()
    expected = old_path(storescu_rq)
    assert len(expected[1]) >= 100  # the many-context case this is about
    assert new_path(ours, storescu_rq) == expected
    assert new_path(ours, storescu_rq) == expected  # from the cache
    assert (ours.by_bytes.hits, len(ours.by_bytes)) == (1, 1)  # the second RQ, parsed


@pytest.mark.parametrize("seed", range(60))
def test_random_proposals_are_answered_as_pynetdicom_did(seed: int) -> None:
    rng = random.Random(seed)
    contexts, roles = random_proposal(rng)
    pdu = rq_pdu(contexts, roles, max_pdu=rng.choice([None, 0, 4096, 16384, 1 << 20]))
    ours = acceptor()
    assert new_path(ours, pdu) == old_path(pdu)


def test_pynetdicom_scu_proposals_with_roles_and_odd_syntaxes() -> None:
    ct = "1.2.840.10008.5.1.4.1.1.2"
    cases: list[list[tuple[int, str, list[str]]]] = [
        [],  # no presentation context at all: an AC that accepts none
        [(1, ct, ["1.2.840.10008.1.2.1"])],
        [(1, ct, ["1.2.840.10008.1.2.4.201"])],  # transfer syntax not ours: result 4
        [(1, UNSUPPORTED[0], ["1.2.840.10008.1.2"])],  # abstract syntax not ours: result 3
        [(1, ct, ["1.2.840.10008.1.2"]), (1, ct, ["1.2.840.10008.1.2.1"])],  # same id and SOP
        [(3, ct, ["1.2.840.10008.1.2"]), (3, scp.VERIFICATION, ["1.2.840.10008.1.2"])],
        [(255, scp.VERIFICATION, ["1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"])],
        [(7, ct, ["1.2.840.10008.1.2"]), (1, ct, ["1.2.840.10008.1.2.5", "1.2.840.10008.1.2"])],
    ]
    role_sets: list[list[tuple[str, bool, bool]]] = [[], [(ct, True, True)], [(ct, False, True)]]
    for contexts in cases:
        for roles in role_sets:
            pdu = rq_pdu(contexts, roles, calling="A" * 16, called=" SMARTBOX")
            assert new_path(acceptor(), pdu) == old_path(pdu), (contexts, roles)


def test_only_the_ae_titles_differ_between_associations_from_the_cache() -> None:
    contexts = [(1, "1.2.840.10008.5.1.4.1.1.2", ["1.2.840.10008.1.2.1"])]
    ours = acceptor()
    for calling, called in [("ONE", "SMARTBOX"), ("ANOTHER_SENDER", "SB_TRUST")]:
        pdu = rq_pdu(contexts, calling=calling, called=called)
        request = ours.parse(pdu)
        assert (request.calling_ae, request.called_ae) == (calling, called)
        assert new_path(ours, pdu) == old_path(pdu)
    assert len(ours.by_bytes) == 1 and ours.by_bytes.hits == 2


def test_the_proposal_cache_serves_other_user_information_and_is_bounded() -> None:
    ours = acceptor(cache_entries=4)
    base = [(1, "1.2.840.10008.5.1.4.1.1.2", ["1.2.840.10008.1.2.1"])]
    for max_pdu in (4096, 8192):  # other bytes, the same proposal set
        pdu = rq_pdu(base, max_pdu=max_pdu)
        assert new_path(ours, pdu) == old_path(pdu)
    assert (ours.by_proposal.hits, len(ours.by_proposal), len(ours.by_bytes)) == (1, 1, 2)
    for n in range(10):
        new_path(ours, rq_pdu([(2 * n + 1, *base[0][1:])]))
    assert len(ours.by_proposal) == 4 and len(ours.by_bytes) == 4


def test_a_proposal_too_large_to_cache_is_answered_all_the_same() -> None:
    syntaxes = [f"1.2.826.0.1.3680043.9.9999.1.{n}" for n in range(20)] + ["1.2.840.10008.1.2"]
    pdu = rq_pdu([(2 * n + 1, STORAGE[n], syntaxes) for n in range(128)])
    assert len(pdu) > associate.CACHE_MAX_RQ_BYTES
    ours = acceptor()
    assert new_path(ours, pdu) == new_path(ours, pdu) == old_path(pdu)
    assert len(ours.by_bytes) == len(ours.by_proposal) == 0


def test_an_rj_is_the_bytes_pynetdicom_encoded() -> None:
    for reason, rejection in status.REJECTIONS.items():
        assert encode_associate_rj(rejection) == reference.encode_associate_rj(rejection), reason


def _mutations(pdu: bytes, rng: random.Random) -> bytes:
    data = bytearray(pdu)
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(74, len(data))
        choice = rng.random()
        if choice < 0.5:
            data[at] = rng.randrange(256)
        elif choice < 0.75:
            del data[at : at + rng.randint(1, 8)]
        else:
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    data[2:6] = struct.pack(">I", len(data) - 6)  # the PDU header as the upper layer read it
    return bytes(data)


def test_malformed_rqs_are_value_errors_that_quote_nothing() -> None:
    ct = "1.2.840.10008.5.1.4.1.1.2"
    good = rq_pdu([(1, ct, ["1.2.840.10008.1.2.1"])], [(ct, True, False)])
    variable = good[74:]

    def pdu(items: bytes) -> bytes:
        return b"\x01\x00" + struct.pack(">I", 68 + len(items)) + good[6:74] + items

    def item(kind: int, value: bytes) -> bytes:
        return struct.pack(">BxH", kind, len(value)) + value

    app = item(0x10, b"1.2.840.10008.3.1.1.1")
    cases = {
        "truncated": [good[:n] for n in range(74)] + [pdu(variable[:n]) for n in (1, 3, 30)],
        "length beyond the PDU": [pdu(app + b"\x20\x00\xff\xff" + b"\x01\x00\x00\x00")],
        "bad item type": [pdu(app + item(0x77, b"")), pdu(app + item(0x21, b"\x01\x00\x00\x00"))],
        "sub-item overrun": [pdu(app + item(0x20, b"\x01\x00\x00\x00" + b"\x30\x00\x00\x09a"))],
        "no transfer syntax": [pdu(app + item(0x20, b"\x01\x00\x00\x00" + item(0x30, b"1.2")))],
        "even id": [
            pdu(app + item(0x20, b"\x02\x00\x00\x00" + item(0x30, b"1") + item(0x40, b"1")))
        ],
        "bad uid": [
            pdu(app + item(0x20, b"\x01\x00\x00\x00" + item(0x30, b"\x01" * 3) + item(0x40, b"1")))
        ],
        "max length size": [pdu(app + item(0x50, item(0x51, b"\x00\x00\x40")))],
        "role value": [pdu(app + item(0x50, item(0x54, b"\x00\x011\x02\x00")))],
        "blank AE": [good[:10] + b" " * 16 + good[26:]],
        "AE control character": [good[:26] + b"A\x00" + b" " * 14 + good[42:]],
        "wrong PDU type": [b"\x02" + good[1:]],
    }
    for what, pdus in cases.items():
        for bad in pdus:
            with pytest.raises(ValueError) as err:
                acceptor().parse(bad)
            assert "SENDER" not in str(err.value) and "1.2" not in str(err.value), what


@pytest.mark.parametrize("seed", range(4))
def test_fuzzed_rqs_are_rejected_cleanly_or_answered_as_pynetdicom_did(
    seed: int, storescu_rq: bytes
) -> None:
    rng = random.Random(seed)
    ours = acceptor()
    base = [storescu_rq, rq_pdu(*random_proposal(rng))]
    both = 0
    for _ in range(500):
        pdu = _mutations(rng.choice(base), rng)
        try:
            answer = new_path(ours, pdu)
        except ValueError:
            continue  # what the upper layer answers with A-ABORT
        try:
            expected = old_path(pdu)
        except Exception:  # noqa: BLE001 - pynetdicom's A-ABORT (or a crash) where we accepted
            reference_failed = True
        else:
            reference_failed = False
            assert answer == expected
            both += 1
        if reference_failed:  # only for what pynetdicom itself refused to read
            A_ASSOCIATE_AC().decode(answer[0])  # what we send is still a well-formed AC
    assert both > 0


def test_an_ac_decodes_in_pynetdicom_to_what_was_accepted(storescu_rq: bytes) -> None:
    ac_bytes, contexts = acceptor().accept(acceptor().parse(storescu_rq))
    ac = A_ASSOCIATE_AC()
    ac.decode(ac_bytes)
    primitive = ac.to_primitive()
    accepted = {
        int(cx.context_id): (str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
        for cx in primitive.presentation_context_definition_results_list
        if cx.result == 0
    }
    # an AC names no abstract syntaxes: our ids and transfer syntaxes, then
    assert {k: v[1] for k, v in accepted.items()} == {k: v[1] for k, v in contexts.items()}
    assert primitive.maximum_length_received == MAX_PDU
    assert primitive.called_ae_title == "SMARTBOX" and primitive.calling_ae_title == "DCMTK_SCU"
