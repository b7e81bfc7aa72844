"""Odd but legitimate input, and hostile input, at the receiver: deflated and big-endian
instances whose header lies beyond the first 64 KiB, arriving in many PDUs (stored byte for
byte, as sent); a spool file that vanished and is sent again; deflate bombs (refused, with the
SCP worker's memory bounded)."""

from __future__ import annotations

import hashlib
import io
import random
import socket
import struct
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pydicom
import pytest
from helpers import dicom_bytes as db
from helpers.receiver_env import (
    LocalReceiver,
    dataset_bytes,
    local_receiver,
    make_trust,
    peak_rss_kib,
    send_files,
    storescu,
)
from helpers.util import wait_for
from pydicom.dataset import Dataset
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
)

from producers.receiver import dimse
from smartbox.synthetic import make_ct_study

MIB = 1 << 20


def _ct(seed: int, rows: int = 512, private: int = 0) -> Dataset:
    """A synthetic CT with incompressible pixels and, if asked, ``private`` bytes of a private
    OB element (0009,1001) before the Study Instance UID."""
    ds = make_ct_study(seed, series=1, per_series=1, rows=rows, columns=rows).datasets[0]
    ds.PixelData = random.Random(seed).randbytes(rows * rows * 2)
    if private:
        block = ds.private_block(0x0009, "SMARTBOX ODD", create=True)
        block.add_new(0x01, "OB", random.Random(seed + 1).randbytes(private))
    return ds


def _save(ds: Dataset, path: Path, syntax: str) -> Path:
    ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(path, enforce_file_format=True)
    return path


class Recorder:
    """A TCP relay between one sender and the receiver that keeps every byte the sender sent."""

    def __init__(self, host: str, port: int) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.target = (host, port)
        self.sent = bytearray()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        client, _ = self.server.accept()
        upstream = socket.create_connection(self.target)

        def pump(src: socket.socket, dst: socket.socket, keep: bytearray | None) -> None:
            while data := src.recv(65536):
                if keep is not None:
                    keep += data
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)

        back = threading.Thread(target=pump, args=(upstream, client, None), daemon=True)
        back.start()
        pump(client, upstream, self.sent)
        back.join(30)
        client.close()
        upstream.close()

    def datasets(self) -> list[tuple[int, bytes]]:
        """(number of P-DATA PDUs it came in, bytes) of each dataset the sender sent."""
        self.thread.join(30)
        out: list[tuple[int, bytes]] = []
        current, pdus, pos = bytearray(), 0, 0
        while pos + 6 <= len(self.sent):
            kind, length = struct.unpack_from(">BxI", self.sent, pos)
            body = self.sent[pos + 6 : pos + 6 + length]
            pos += 6 + length
            item = 0
            while kind == 0x04 and item < len(body):  # the PDV items of a P-DATA-TF
                size, _context, control = struct.unpack_from(">IBB", body, item)
                if not control & 0x01:  # a dataset fragment
                    current += body[item + 6 : item + 4 + size]
                    if control & 0x02:
                        out.append((pdus + 1, bytes(current)))
                        current, pdus = bytearray(), -1
                item += 4 + size
            pdus += 1 if current or pdus < 0 else 0
        return out


def _stored(r: LocalReceiver) -> dict[bytes, bytes]:
    """Dataset bytes -> whole object, of every instance in quarantine."""
    return {dataset_bytes(data): data for data in r.quarantine().values()}


def test_deflated_ct_over_128k_from_storescu_in_many_pdus_stored_as_sent(tmp_path: Path) -> None:
    plain = _save(_ct(21), tmp_path / "ct.dcm", ExplicitVRLittleEndian)
    deflated = tmp_path / "ct_deflated.dcm"
    subprocess.run(["/usr/bin/dcmconv", "+td", str(plain), str(deflated)], check=True)
    assert pydicom.dcmread(deflated).file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    assert len(dataset_bytes(deflated)) > 500 * 1024  # noise does not deflate: large on the wire
    with local_receiver(tmp_path / "rx", max_pdu=4096) as r:
        relay = Recorder(r.host, r.port)
        done = storescu("127.0.0.1", relay.port, r.trust.ae_title, [deflated], "-xd")
        assert done.returncode == 0, done.stdout + done.stderr
        ((pdus, sent),) = relay.datasets()
        assert pdus > 100 and len(sent) > 128 * 1024
        assert db.inflate(sent) == db.inflate(dataset_bytes(deflated))  # deflated on the wire
        assert r.metric("smartbox_cstore_status_total", status="0x0000") == 1
        wait_for(lambda: r.arrived_count() == 1, 30, "study.arrived")
        ((stored, whole),) = _stored(r).items()
        assert stored == sent  # exactly the bytes storescu sent, behind our File Meta
        meta = pydicom.dcmread(io.BytesIO(whole), stop_before_pixels=True)
        assert meta.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
        assert meta.StudyInstanceUID == pydicom.dcmread(plain).StudyInstanceUID


def test_deflated_and_big_endian_study_uid_beyond_64k_stored_byte_for_byte(
    tmp_path: Path,
) -> None:
    """The study UID after 150 KiB (deflated) and 90 KiB (big endian) of private data: the
    header must be read through the file, which must be complete by then; all three instances
    belong to one study."""
    files = [
        _save(
            _ct(31, rows=256, private=150 * 1024),
            tmp_path / "d.dcm",
            DeflatedExplicitVRLittleEndian,
        ),
        _save(_ct(31, rows=64, private=90 * 1024), tmp_path / "b.dcm", ExplicitVRBigEndian),
        _save(_ct(31, rows=64), tmp_path / "l.dcm", ExplicitVRLittleEndian),
    ]
    big_endian = dataset_bytes(files[1])
    assert big_endian.index(bytes.fromhex("0020000d")) > 90 * 1024
    assert len(dataset_bytes(files[0])) > 128 * 1024
    with local_receiver(tmp_path / "rx", max_pdu=4096) as r:
        assert send_files(r.host, r.port, r.trust.ae_title, files, max_pdu=4096).statuses == [0] * 3
        wait_for(lambda: r.arrived_count() == 3, 30, "study.arrived")
        (message,) = r.arrived()  # one study: every study UID was read right
        assert message["body"]["modalities"] == ["CT"]
        assert sorted(_stored(r)) == sorted(dataset_bytes(f) for f in files)


def _victim(r: LocalReceiver) -> Path:
    return next((r.service.spool.files).glob("*/*.dcm"))


def _source_of(spooled: Path, files: list[Path]) -> Path:
    body = dataset_bytes(spooled)
    return next(f for f in files if dataset_bytes(f) == body)


def test_a_spool_file_lost_before_a_restart_is_stored_again_when_resent(tmp_path: Path) -> None:
    files = make_ct_study(61, series=1, per_series=3).write(tmp_path / "send")
    trust = make_trust(quiet_seconds=3600, max_wait_seconds=3600)
    r = LocalReceiver(trust, tmp_path / "rx")
    assert send_files(r.host, r.port, trust.ae_title, files).statuses == [0] * 3
    r.close()
    victim = _victim(r)
    lost = _source_of(victim, files)
    victim.unlink()

    r = LocalReceiver(make_trust(trust.code, quiet_seconds=0.3), tmp_path / "rx")
    try:
        wait_for(lambda: r.arrived_count() == 2, 30, "the two remaining announced")
        assert r.metric("smartbox_failures_total", stage="receive", kind="spool_file_lost") == 1
        # the PACS sends it again: stored and announced, not taken for a duplicate
        assert send_files(r.host, r.port, trust.ae_title, [lost]).statuses == [0]
        wait_for(lambda: r.arrived_count() == 3, 30, "the resent instance announced")
        amendment = [m for m in r.arrived() if m["body"]["amendment"]]
        assert [m["body"]["instance_count"] for m in amendment] == [1]
        (entry,) = r.batch(amendment[0])["instances"]
        assert dataset_bytes(r.store.get_bytes("quarantine", entry["key"])) == dataset_bytes(lost)
        assert r.metric("smartbox_duplicate_instances_total", kind="identical") == 0
        assert r.service.spool.pending_stats()[:2] == (0, 0)
    finally:
        r.close()


class HeldUploads:
    """The receiver's object store with uploads (``put_file``) held until ``gate`` is set: an
    object store slow to answer, everything else as it is."""

    def __init__(self, store: Any, gate: threading.Event) -> None:
        self._store, self._gate = store, gate

    def put_file(self, *args: Any, **kwargs: Any) -> Any:
        self._gate.wait(30)
        return self._store.put_file(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


@contextmanager
def _held_study(
    tmp_path: Path, seed: int, *, quiet_seconds: float
) -> Iterator[tuple[LocalReceiver, list[Path], threading.Event, Path]]:
    """A study of 3 received with the relay's uploads held (the object store slow to answer),
    so that a spool file can be changed before its upload, as it could be on a real box:
    (receiver, the files sent, the gate that releases the uploads, one spool file)."""
    files = make_ct_study(seed, series=1, per_series=3).write(tmp_path / "send")
    with local_receiver(tmp_path / "rx", quiet_seconds=quiet_seconds) as r:
        gate = threading.Event()
        r.service.relay.store = HeldUploads(r.service.relay.store, gate)
        assert send_files(r.host, r.port, r.trust.ae_title, files).statuses == [0] * 3
        yield r, files, gate, _victim(r)


def test_a_spool_file_vanishing_while_running_is_lost_then_resent(tmp_path: Path) -> None:
    """Without a restart: the relay finds the file gone, marks it lost and announces the rest
    (instead of waiting for it forever); the resend is stored and announced."""
    with _held_study(tmp_path, 62, quiet_seconds=3) as (r, files, gate, victim):
        lost = _source_of(victim, files)
        victim.unlink()  # inside the quiet period and before its upload
        gate.set()
        wait_for(lambda: r.arrived_count() == 2, 30, "the two remaining announced")
        assert r.metric("smartbox_failures_total", stage="receive", kind="spool_file_lost") == 1
        assert send_files(r.host, r.port, r.trust.ae_title, [lost]).statuses == [0]
        wait_for(lambda: r.arrived_count() == 3, 30, "the resent instance announced")
        assert dataset_bytes(lost) in _stored(r)
        assert [m["body"]["amendment"] for m in r.arrived()] == [False, True]


def test_a_spool_file_damaged_before_its_upload_still_reaches_quarantine(tmp_path: Path) -> None:
    """The relay signs the digest intake recorded instead of hashing the file again; a file
    damaged since is uploaded as it is, under its recorded key (MinIO and AWS refuse the
    digest first and it is sent again hashed: ``test_s3_known_digest``), so that its study is
    announced and the anonymiser's verified read holds that one instance back."""
    with _held_study(tmp_path, 63, quiet_seconds=1) as (r, _files, gate, victim):
        original = victim.read_bytes()
        damaged = original[:-16] + bytes(b ^ 0xFF for b in original[-16:])
        victim.write_bytes(damaged)  # same size, other bytes: bit rot on the spool's disk
        gate.set()
        wait_for(lambda: r.arrived_count() == 3, 30, "the study announced, all three")
        stored = r.quarantine()
        assert damaged in stored.values() and original not in stored.values()
        (key,) = [k for k, v in stored.items() if v == damaged]
        assert hashlib.sha256(original).hexdigest()[:16] in key  # the digest intake recorded


def _bomb_file(path: Path, prefix: bytes, zeros: int, suffix: bytes = b"") -> Path:
    """A deflated CT file whose dataset is ``prefix``, ``zeros`` zero bytes and ``suffix``."""
    uid = f"1.2.826.0.1.3680043.8.498.{zeros}.{len(prefix)}"
    meta = dimse.file_meta(CTImageStorage, uid, DeflatedExplicitVRLittleEndian)
    path.write_bytes(meta + db.deflate_bomb(prefix, zeros, suffix))
    return path


def _elements(*items: tuple[int, bytes, bytes]) -> bytes:
    enc = db.Encoding(implicit=False, little=True)
    return b"".join(db.encode_element(tag, vr, value, enc) for tag, vr, value in items)


@pytest.mark.timeout(180)
def test_deflate_bombs_are_refused_with_the_worker_memory_bounded(tmp_path: Path) -> None:
    sop = b"1.2.826.0.1.3680043.8.498.77"
    head = _elements(
        (0x00080016, b"UI", CTImageStorage.encode()),
        (0x00080018, b"UI", sop),
        (0x00080060, b"CS", b"CT"),
    )
    study = _elements((0x0020000D, b"UI", b"1.2.826.0.1.3680043.8.498.78"))
    pixels = b"\xe0\x7f\x10\x00OB\x00\x00" + struct.pack("<I", 512 * MIB)
    private = b"\x09\x00\x01\x10OB\x00\x00" + struct.pack("<I", 256 * MIB)
    bombs = [
        # a valid header, then 512 MiB of zero pixels: ~0.5 MB on the wire
        _bomb_file(tmp_path / "pixels.dcm", head + study + pixels, 512 * MIB),
        # 256 MiB of zeros before the study UID: the walker inflates them to find it
        _bomb_file(tmp_path / "private.dcm", head + private, 256 * MIB, study),
        # nothing but zeros
        _bomb_file(tmp_path / "zeros.dcm", b"", 256 * MIB),
    ]
    assert all(b.stat().st_size < 600 * 1024 for b in bombs)
    good = _save(_ct(41, rows=64), tmp_path / "good.dcm", DeflatedExplicitVRLittleEndian)
    r = LocalReceiver(make_trust(), tmp_path / "rx", workers=1)
    try:
        (worker,) = r.service.pool.pids()
        before = peak_rss_kib(worker)
        result = send_files(r.host, r.port, r.trust.ae_title, [*bombs, good])
        growth_mib = (peak_rss_kib(worker) - before) / 1024
        assert growth_mib < 48, f"the SCP worker grew by {growth_mib:.0f} MiB"
        assert result.statuses == [0xA700, 0xA700, 0xC210, 0]
        wait_for(
            lambda: r.metric("smartbox_failures_total", stage="receive", kind="inflate_limit") == 2,
            10,
            "two inflate_limit failures counted",
        )
        wait_for(lambda: r.arrived_count() == 1, 30, "the good instance announced")
        assert list(_stored(r)) == [dataset_bytes(good)]
        assert list(r.service.spool.tmp.iterdir()) == []
    finally:
        r.close()


def test_max_inflated_bytes_comes_from_the_trust(tmp_path: Path) -> None:
    legit = _save(_ct(51, rows=1024), tmp_path / "big.dcm", DeflatedExplicitVRLittleEndian)
    assert len(db.inflate(dataset_bytes(legit))) > 2 * MIB
    with local_receiver(tmp_path / "a", max_inflated_bytes=MIB) as tight:
        assert send_files(tight.host, tight.port, tight.trust.ae_title, [legit]).statuses == [
            0xA700
        ]
    with local_receiver(tmp_path / "b") as default:
        assert send_files(default.host, default.port, default.trust.ae_title, [legit]).statuses == [
            0
        ]
