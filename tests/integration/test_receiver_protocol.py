"""The upper layer against peers that misbehave or push limits: what goes on the wire back,
and that nothing half-received is ever kept."""

from __future__ import annotations

import io
import os
import socket
import struct
import subprocess
import time
from pathlib import Path

from helpers.receiver_env import CALLER, local_receiver, send_files, storescu
from helpers.receiver_pdus import associate_raw, associate_rq, pdv, read_pdu
from helpers.util import wait_for
from pydicom.data import get_testdata_file
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.dsutils import decode

from producers.receiver import dimse

CT = Path(get_testdata_file("CT_small.dcm"))


def store_command(message_id: int = 1, sop_class: str = CTImageStorage) -> bytes:
    """An encoded C-STORE-RQ command set (implicit VR little endian)."""

    def el(element: int, value: bytes) -> bytes:
        return struct.pack("<HHI", 0, element, len(value)) + value

    def ui(value: str) -> bytes:
        raw = value.encode()
        return raw + b"\x00" * (len(raw) % 2)

    body = el(0x0002, ui(sop_class)) + el(0x0100, struct.pack("<H", dimse.C_STORE_RQ))
    body += el(0x0110, struct.pack("<H", message_id)) + el(0x0700, struct.pack("<H", 0))
    body += el(0x0800, struct.pack("<H", 0)) + el(0x1000, ui("1.2.3.4.5"))
    return el(0x0000, struct.pack("<I", len(body))) + body


def test_malformed_and_unexpected_pdus_are_aborted(tmp_path: Path) -> None:
    with local_receiver(tmp_path) as r:
        for garbage in (b"GET / HTTP/1.1\r\n\r\n", struct.pack(">BxI", 0x04, 8) + b"\x00" * 8):
            sock = socket.create_connection((r.host, r.port), 10)
            sock.sendall(garbage)
            kind, body = read_pdu(sock)
            assert kind == 0x07 and body[2] == 0x02  # A-ABORT from the service provider
            sock.close()
        # a P-DATA on a context that was never accepted
        sock = associate_raw(r.host, r.port, r.trust.ae_title)
        sock.sendall(pdv(9, 0x03, b"\x00" * 8))
        assert read_pdu(sock)[0] == 0x07
        sock.close()
        # a PDU larger than the maximum we announced
        sock = associate_raw(r.host, r.port, r.trust.ae_title)
        sock.sendall(struct.pack(">BxI", 0x04, r.trust.max_pdu + 1024))
        assert read_pdu(sock)[0] == 0x07
        sock.close()
        assert r.metric("smartbox_instances_received_total") == 0


def test_abort_mid_dataset_keeps_nothing(tmp_path: Path) -> None:
    with local_receiver(tmp_path) as r:
        sock = associate_raw(r.host, r.port, r.trust.ae_title)
        sock.sendall(pdv(1, 0x03, store_command()))
        sock.sendall(pdv(1, 0x00, b"\x08\x00\x60\x00CS\x02\x00CT" * 100))  # not the last fragment
        time.sleep(0.3)
        sock.sendall(struct.pack(">BxI", 0x07, 4) + b"\x00\x00\x00\x00")  # A-ABORT
        sock.close()
        spool = r.service.spool
        wait_for(lambda: not list(spool.tmp.iterdir()), 10, "the half-received file removed")
        assert spool.pending_stats()[0] == 0
        assert r.metric("smartbox_cstore_status_total", status="0x0000") == 0


def test_store_on_the_wrong_sop_class_context_is_refused(tmp_path: Path) -> None:
    mr = "1.2.840.10008.5.1.4.1.1.4"
    with local_receiver(tmp_path) as r:
        sock = associate_raw(r.host, r.port, r.trust.ae_title)  # context 1 is CT
        sock.sendall(pdv(1, 0x03, store_command(7, mr)))
        sock.sendall(pdv(1, 0x02, b"\x08\x00\x60\x00CS\x02\x00MR"))
        kind, body = read_pdu(sock)
        assert kind == 0x04
        response = decode(io.BytesIO(body[6:]), True, True)  # pynetdicom's decoder, not ours
        assert response.CommandField == dimse.C_STORE_RSP
        assert response.MessageIDBeingRespondedTo == 7
        assert response.Status == 0x0122  # SOP class not supported on this context
        sock.sendall(struct.pack(">BxI", 0x05, 4) + b"\x00" * 4)  # A-RELEASE-RQ
        assert read_pdu(sock)[0] == 0x06  # A-RELEASE-RP
        sock.close()


def test_echo_and_the_association_limit(tmp_path: Path, dcmtk: dict[str, str]) -> None:
    with local_receiver(tmp_path, max_associations=1) as r:
        echo = subprocess.run(
            [dcmtk["echoscu"], "-aet", CALLER, "-aec", r.trust.ae_title, r.host, str(r.port)],
            env=dict(os.environ, TCP_NODELAY="1"),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert echo.returncode == 0, echo.stderr
        ae = AE(ae_title=CALLER)
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        held = ae.associate(r.host, r.port, ae_title=r.trust.ae_title)
        try:
            assert held.is_established
            busy = send_files(r.host, r.port, r.trust.ae_title, [CT])
            assert (busy.established, busy.reject) == (False, (2, 3, 2))
            assert r.metric("smartbox_associations_total", result="rejected_busy") == 1
        finally:
            held.release()
            ae.shutdown()
        wait_for(lambda: r.service.scp.active_associations() == 0, 10, "the held one released")
        assert storescu(r.host, r.port, r.trust.ae_title, [CT]).returncode == 0
        assert r.metric("smartbox_instances_received_total") == 1


def _items(*items: tuple[int, bytes]) -> bytes:
    return b"".join(struct.pack(">BxH", kind, len(value)) + value for kind, value in items)


def test_malformed_associate_requests_are_aborted_and_harm_no_other_association(
    tmp_path: Path, dcmtk: dict[str, str]
) -> None:
    good = associate_rq("SMARTBOX")
    fixed, variable = good[6:74], good[74:]
    context = b"\x01\x00\x00\x00" + _items((0x30, b"1.2.840.10008.5.1.4.1.1.2"))
    malformed = [
        variable[: len(variable) // 2],  # an item cut short
        variable + b"\x20\x00\xff\xf0\x01\x00\x00\x00",  # a length beyond the PDU
        variable + _items((0x77, b"")),  # an item type that does not exist
        _items((0x10, b"1.2.840.10008.3.1.1.1"), (0x20, context)),  # no transfer syntax
        _items((0x10, b"1.2.840.10008.3.1.1.1"), (0x50, _items((0x51, b"\x00\x40")))),
    ]
    with local_receiver(tmp_path) as r:
        fixed = fixed[:4] + r.trust.ae_title.encode().ljust(16) + fixed[20:]
        ae = AE(ae_title=CALLER)
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        held = ae.associate(r.host, r.port, ae_title=r.trust.ae_title)
        try:
            assert held.is_established
            for items in malformed:
                with socket.create_connection((r.host, r.port), 10) as sock:
                    sock.sendall(struct.pack(">BxI", 0x01, 68 + len(items)) + fixed + items)
                    kind, body = read_pdu(sock)
                    assert kind == 0x07 and body[2:] == b"\x02\x06"  # provider: invalid parameter
            # the association that was there all along still stores
            assert held.send_c_store(CT).Status == 0x0000
        finally:
            held.release()
            ae.shutdown()
        # dcmtk's many-context proposal, twice: the second answered from the negotiation cache
        for _ in range(2):
            sent = storescu(r.host, r.port, r.trust.ae_title, [CT])
            assert sent.returncode == 0, sent.stderr
        echo = subprocess.run(
            [dcmtk["echoscu"], "-aet", CALLER, "-aec", r.trust.ae_title, r.host, str(r.port)],
            env=dict(os.environ, TCP_NODELAY="1"),
            capture_output=True,
            timeout=60,
        )
        assert echo.returncode == 0
        acceptor = r.service.scp.acceptor  # type: ignore[union-attr]
        # pynetdicom's, storescu's (twice: one hit) and echoscu's proposals
        assert (acceptor.by_bytes.hits, len(acceptor.by_bytes)) == (1, 3)
        # one instance three times: as pynetdicom encodes it, as storescu sends it (other
        # bytes: a new version, kept), and storescu's bytes again (identical, dropped)
        identical = r.metric("smartbox_duplicate_instances_total", kind="identical")
        assert (r.metric("smartbox_instances_received_total"), identical) == (2, 1)
        assert r.metric("smartbox_associations_total", result="accepted") == 4
