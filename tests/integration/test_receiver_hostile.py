"""Peers that hold sockets without associating, trickle bytes, announce huge PDUs and never
send them, or call from outside the trust's networks: the trust's real PACS keeps getting in,
every such socket is closed by a deadline, and memory follows bytes received, not announced."""

from __future__ import annotations

import socket
import struct
import threading
import time
from pathlib import Path

import pytest
from helpers.receiver_env import local_receiver, peak_rss_kib, rss_kib, send_files, storescu
from helpers.receiver_pdus import (
    associate_raw,
    associate_rq,
    closed_by_peer,
    pdu_header,
    pdv,
    read_pdu,
)
from helpers.util import wait_for
from pydicom.data import get_testdata_file

CT = Path(get_testdata_file("CT_small.dcm"))
ARTIM = 1.5  # the trust file's artim_seconds, short so that the test is
DRIP = 0.3  # seconds between the trickled bytes: well inside ARTIM, so per-recv timeouts never fire
ANNOUNCED = 1 << 20  # an A-ASSOCIATE-RQ of 1 MiB, the most we take; none of it is ever sent


class SlowLoris:
    """Keeps ``count`` sockets open before association, each from its source address, sending
    a 1 MiB A-ASSOCIATE-RQ header and then one byte every ``DRIP`` seconds; reconnects those
    the receiver closes, until ``stop``; counts how many the receiver closed."""

    def __init__(self, host: str, port: int, sources: list[str]) -> None:
        self.address = (host, port)
        self.sources = sources
        self.socks: dict[int, socket.socket] = {}
        self.closed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _connect(self, i: int) -> None:
        sock = socket.socket()
        sock.bind((self.sources[i], 0))
        sock.settimeout(5)
        sock.connect(self.address)
        sock.sendall(pdu_header(0x01, ANNOUNCED))
        self.socks[i] = sock

    def start(self) -> SlowLoris:
        for i in range(len(self.sources)):
            self._connect(i)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(DRIP):
            for i, sock in list(self.socks.items()):
                gone = closed_by_peer(sock)
                if not gone:
                    try:
                        sock.send(b"\x00")
                    except OSError:
                        gone = True
                if gone:
                    sock.close()
                    self.closed += 1
                    self._connect(i)

    def stop(self) -> None:
        """Stop reconnecting; keep trickling on the sockets still open."""
        self._stop.set()
        self._thread.join(10)

    def all_closed_by_receiver(self) -> bool:
        for i, sock in list(self.socks.items()):
            if closed_by_peer(sock):
                sock.close()
                del self.socks[i]
            else:
                try:
                    sock.send(b"\x00")
                except OSError:
                    pass
        return not self.socks

    def close(self) -> None:
        self.stop()
        for sock in self.socks.values():
            sock.close()


def test_slow_connections_do_not_starve_the_pacs(tmp_path: Path, dcmtk: dict[str, str]) -> None:
    # 20 sockets from one address (over its per-address cap of 8) and 80 from 80 others (over
    # the per-worker cap of 64), against max_associations = 2: today all 100 count as
    # associations, ARTIM is restarted by every byte, and storescu is refused "local limit"
    with local_receiver(
        tmp_path,
        workers=1,
        max_associations=2,
        max_pending_associations=64,
        max_pending_per_address=8,
        artim_seconds=ARTIM,
    ) as r:
        assert r.service.pool is not None
        pid = r.service.pool.pids()[0]
        before_kib = rss_kib(pid)
        sources = ["127.0.0.2"] * 20 + [f"127.0.1.{i}" for i in range(1, 81)]
        loris = SlowLoris(r.host, r.port, sources).start()
        try:
            for _ in range(4):  # over about three ARTIM periods of reconnecting attackers
                result = storescu(r.host, r.port, r.trust.ae_title, [CT])
                assert result.returncode == 0, result.stdout + result.stderr
                time.sleep(ARTIM)
            loris.stop()
            wait_for(loris.all_closed_by_receiver, 4 * ARTIM + 10, "every slow socket closed")
        finally:
            loris.close()
        grown_mib = (peak_rss_kib(pid) - before_kib) / 1024
        # today: ~1 MiB allocated per announced A-ASSOCIATE-RQ, i.e. over 100 MiB
        assert grown_mib < 40, f"worker grew by {grown_mib:.0f} MiB"
        wait_for(
            lambda: r.metric("smartbox_cstore_status_total", status="0x0000") == 4,
            10,
            "the counters of the worker",
        )
        assert r.metric("smartbox_associations_total", result="accepted") == 4
        assert r.metric("smartbox_associations_total", result="rejected_busy") == 0
        assert r.metric("smartbox_associations_total", result="rejected_pending_per_address") > 0
        assert r.metric("smartbox_associations_total", result="rejected_pending_limit") > 0
        assert r.metric("smartbox_associations_total", result="rejected_artim") > 0
        assert loris.closed >= 100  # the first hundred at least, by the deadline or a cap


def test_a_rejected_peer_is_closed_at_the_artim_deadline(tmp_path: Path) -> None:
    with local_receiver(tmp_path, artim_seconds=ARTIM) as r:
        sock = socket.create_connection((r.host, r.port), 10)
        try:
            sock.sendall(associate_rq(r.trust.ae_title, calling="STRANGER"))
            assert read_pdu(sock)[0] == 0x03  # A-ASSOCIATE-RJ; then the peer never closes
            sock.settimeout(None)

            def closed() -> bool:
                if closed_by_peer(sock):
                    return True
                sock.send(b"\x00")  # Sta13: a byte now and then must not extend the wait
                return False

            wait_for(closed, 4 * ARTIM + 10, "the rejected peer's socket closed", interval=DRIP)
        finally:
            sock.close()
        assert r.metric("smartbox_associations_total", result="rejected_calling_ae") == 1


@pytest.mark.parametrize("trickle", [False, True], ids=["idle", "trickling"])
def test_an_established_association_that_stalls_is_aborted(tmp_path: Path, trickle: bool) -> None:
    timeout = 1.0
    with local_receiver(tmp_path, network_timeout_seconds=timeout) as r:
        sock = associate_raw(r.host, r.port, r.trust.ae_title)
        try:
            if trickle:
                sock.sendall(pdu_header(0x04, 4096))  # a P-DATA-TF that never completes

            def aborted() -> bool:
                if closed_by_peer(sock):
                    return True
                if trickle:
                    sock.send(b"\x00")
                return False

            wait_for(aborted, 10 * timeout + 10, "the stalled association ended", interval=0.2)
        finally:
            sock.close()
        assert r.service.scp is not None
        wait_for(lambda: r.service.scp.active_associations() == 0, 10, "no association left")
        assert r.metric("smartbox_failures_total", stage="receive", kind="network_timeout") == 1


def test_the_source_address_is_checked_before_the_ae_titles(tmp_path: Path) -> None:
    with local_receiver(tmp_path, allowed_networks=("10.0.0.0/8",)) as r:
        for called, calling in ((r.trust.ae_title, "STRANGER"), ("NOT_US", "STRANGER")):
            res = send_files(r.host, r.port, called, [CT], calling=calling)
            # permanent, service user, no reason given: nothing about which AE titles exist
            assert (res.established, res.reject) == (False, (1, 1, 1))
        assert r.metric("smartbox_associations_total", result="rejected_source_address") == 2
        assert r.metric("smartbox_associations_total", result="rejected_calling_ae") == 0
        assert r.metric("smartbox_associations_total", result="rejected_called_ae") == 0


def test_a_command_set_that_never_ends_is_aborted(tmp_path: Path) -> None:
    """Command fragments without the "last" bit, 16 KiB at a time: the association is aborted
    once the command set passes its limit instead of buffering whatever the peer sends."""
    with local_receiver(tmp_path) as r:
        sock = associate_raw(r.host, r.port, r.trust.ae_title)
        fragment = pdv(1, 0x01, b"\x00" * 16000)  # a command fragment, not the last
        sent = 0
        try:
            while sent < 64 << 20:
                try:
                    sock.sendall(fragment)
                except OSError:
                    break
                sent += len(fragment)
            kind, _body = read_pdu(sock)
        finally:
            sock.close()
        assert kind in (0x07, -1)  # A-ABORT (or closed right after it)
        assert sent < 8 << 20, "the receiver kept reading a command set of many MiB"


def _c_store_rq(sop_class: bytes, sop_instance: bytes, message_id: int = 7) -> bytes:
    """An implicit VR LE C-STORE-RQ command set (PS3.7 9.3.1.1) with the given UIDs as bytes."""

    def el(element: int, value: bytes) -> bytes:
        return struct.pack("<HHI", 0, element, len(value)) + value

    def even(value: bytes) -> bytes:
        return value + b"\x00" if len(value) % 2 else value

    body = el(0x0002, even(sop_class)) + el(0x0100, struct.pack("<H", 0x0001))
    body += el(0x0110, struct.pack("<H", message_id)) + el(0x0700, struct.pack("<H", 0))
    body += el(0x0800, struct.pack("<H", 0x0000)) + el(0x1000, even(sop_instance))
    return el(0x0000, struct.pack("<I", len(body))) + body


@pytest.mark.parametrize(
    "sop_instance",
    ["1.2.3.\u00e9".encode("latin-1"), "1.2.Åsa".encode(), b"1.2.3." + b"9" * 80, b"1.2.x.4"],
    ids=["latin1", "utf8", "too-long", "letters"],
)
def test_a_c_store_with_an_invalid_sop_instance_uid_is_answered(
    tmp_path: Path, sop_instance: bytes
) -> None:
    """The command's SOP Instance UID names the stored file: one that is not a UID is answered
    0xC210 (after its dataset is read), the association goes on, and nothing is stored."""
    from pydicom.uid import CTImageStorage

    with local_receiver(tmp_path) as r:
        sock = associate_raw(r.host, r.port, r.trust.ae_title)
        try:
            sock.sendall(pdv(1, 0x03, _c_store_rq(CTImageStorage.encode(), sop_instance)))
            sock.sendall(pdv(1, 0x02, CT.read_bytes()[132:]))
            kind, body = read_pdu(sock)
            assert kind == 0x04, "the C-STORE was not answered"
            command = body[6:]  # one PDV: length, context id, control header
            pos, status = 0, None
            while pos < len(command):
                _g, element, length = struct.unpack_from("<HHI", command, pos)
                if element == 0x0900:
                    status = struct.unpack_from("<H", command, pos + 8)[0]
                pos += 8 + length
            assert status == 0xC210
            sock.sendall(pdu_header(0x05, 4) + b"\x00" * 4)  # A-RELEASE-RQ: still associated
            assert read_pdu(sock)[0] == 0x06
        finally:
            sock.close()
        assert not list((tmp_path).rglob("instances/*/*.dcm"))
