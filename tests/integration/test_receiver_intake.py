"""Receiving: bytes stored exactly as sent (every common transfer syntax, many SOP classes),
honest status codes (0xC210 undecodable, 0xA700 failing disk), and large instances that do not
blow up the receiver's memory."""

from __future__ import annotations

import errno
import hashlib
from collections import Counter
from pathlib import Path

import pydicom
import pytest
from helpers.receiver_env import (
    LocalReceiver,
    dataset_bytes,
    local_receiver,
    make_trust,
    peak_rss_kib,
    rss_kib,
    send_files,
)
from helpers.util import wait_for
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from producers.receiver import intake

BREADTH = [
    "CT_small.dcm",  # Explicit VR Little Endian, CT
    "MR_small_implicit.dcm",  # Implicit VR Little Endian, MR
    "MR_small_bigendian.dcm",  # Explicit VR Big Endian (same SOP instance: a new version)
    "ExplVR_BigEnd.dcm",  # Explicit VR Big Endian, US
    "image_dfl.dcm",  # Deflated Explicit VR Little Endian
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG Baseline
    "examples_ybr_color.dcm",  # JPEG Baseline, US multi-frame
    "JPGExtended.dcm",  # JPEG Extended (12 bit)
    "SC_rgb_jpeg_gdcm.dcm",  # JPEG Lossless SV1
    "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless
    "JPEG2000.dcm",  # JPEG 2000
    "693_J2KI.dcm",  # JPEG 2000, CT
    "MR_small_RLE.dcm",  # RLE Lossless
    "SC_rgb_rle_2frame.dcm",  # RLE Lossless, 2 frames
    "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless
    "liver_1frame.dcm",  # Segmentation
    "rtplan.dcm",  # RT Plan
    "rtdose.dcm",  # RT Dose
    "test-SR.dcm",  # Comprehensive SR
    "waveform_ecg.dcm",  # 12-lead ECG
]


def test_every_syntax_and_class_stored_byte_for_byte(tmp_path: Path) -> None:
    files = [Path(get_testdata_file(name)) for name in BREADTH]
    with local_receiver(tmp_path) as r:
        result = send_files(r.host, r.port, r.trust.ae_title, files)
        assert result.established and result.accepted_contexts > 10
        assert result.statuses == [0] * len(files)
        wait_for(lambda: r.arrived_count() == len(files), 30, "study.arrived for every file")

        stored = sorted(dataset_bytes(data) for data in r.quarantine().values())
        assert stored == sorted(dataset_bytes(f) for f in files)
        # same SOP Instance UID with other bytes is kept as a new version, and counted
        uids = Counter(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files)
        versions = sum(n - 1 for n in uids.values())
        assert versions >= 2
        assert r.metric("smartbox_duplicate_instances_total", kind="new_version") == versions
        assert r.metric("smartbox_instances_received_total") == len(files)
        assert r.metric("smartbox_cstore_status_total", status="0x0000") == len(files)
        # each quarantine object is announced with its own sha256
        for message in r.arrived():
            for entry in r.batch(message)["instances"]:
                data = r.store.get_bytes("quarantine", entry["key"])
                assert hashlib.sha256(data).hexdigest() == entry["sha256"]


def _raw_file(path: Path, body: bytes, sop_uid: str) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.save_as(path, enforce_file_format=True)
    with open(path, "ab") as f:
        f.write(body)
    return path


def test_undecodable_datasets_are_refused_with_c210(tmp_path: Path) -> None:
    garbage = _raw_file(
        tmp_path / "garbage.dcm", b"\x08\x00\x05\x00CS\xff\xff" + b"\x00" * 64, "1.2.3.1"
    )
    no_study = Dataset()
    no_study.SOPClassUID, no_study.SOPInstanceUID = CTImageStorage, "1.2.3.2"
    no_study.Modality = "CT"
    no_study.file_meta = FileMetaDataset()
    no_study.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    no_study.file_meta.MediaStorageSOPClassUID = CTImageStorage
    no_study.file_meta.MediaStorageSOPInstanceUID = "1.2.3.2"
    no_study.save_as(tmp_path / "nostudy.dcm", enforce_file_format=True)
    good = Path(get_testdata_file("CT_small.dcm"))
    with local_receiver(tmp_path) as r:
        result = send_files(
            r.host, r.port, r.trust.ae_title, [garbage, tmp_path / "nostudy.dcm", good]
        )
        assert result.statuses == [0xC210, 0xC210, 0]
        assert r.metric("smartbox_cstore_status_total", status="0xC210") == 2
        assert r.metric("smartbox_failures_total", stage="receive", kind="undecodable") == 2
        wait_for(lambda: r.arrived_count() == 1, 30, "the good instance announced")
        assert len(r.quarantine()) == 1
        assert list((r.service.spool.tmp).iterdir()) == []


def test_failing_disk_answers_a700_and_keeps_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = [Path(get_testdata_file(n)) for n in ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm")]
    real_write = intake.os.write

    def failing_sync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    def disk_full(fd: int, data: bytes) -> int:
        if fd in {f.fd for f in list(intake._open_files.values())}:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    with local_receiver(tmp_path) as r:
        with monkeypatch.context() as m:
            m.setattr(intake.os, "fdatasync", failing_sync)
            first = send_files(r.host, r.port, r.trust.ae_title, files[:1])
        with monkeypatch.context() as m:
            m.setattr(intake.os, "write", disk_full)
            second = send_files(r.host, r.port, r.trust.ae_title, files[1:2])
        third = send_files(r.host, r.port, r.trust.ae_title, files[2:])
        assert (first.statuses, second.statuses, third.statuses) == ([0xA700], [0xA700], [0])
        assert r.metric("smartbox_failures_total", stage="receive", kind="disk") == 2
        wait_for(lambda: r.arrived_count() == 1, 30, "the third instance announced")
        assert len(r.quarantine()) == 1
        assert r.service.spool.pending_stats()[0] == 0
        assert list(r.service.spool.tmp.iterdir()) == []


def _large_multiframe(path: Path, frames: int) -> Path:
    """A multi-frame CT of ``frames`` 512x512x16-bit frames, written without a 200 MB copy."""
    rows = cols = 512
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"  # Enhanced CT
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "CT"
    ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.save_as(path, enforce_file_format=True)
    frame = bytes(range(256)) * (rows * cols * 2 // 256)
    with open(path, "ab") as f:
        f.write(b"\xe0\x7f\x10\x00OW\x00\x00" + (len(frame) * frames).to_bytes(4, "little"))
        for _ in range(frames):
            f.write(frame)
    return path


def test_large_multiframe_instance_does_not_blow_up_memory(tmp_path: Path) -> None:
    big = _large_multiframe(tmp_path / "big.dcm", frames=420)  # 220 MB
    size = big.stat().st_size
    assert size > 200 * 1024 * 1024
    trust = make_trust(spool_high_water_bytes=4 * size)
    r = LocalReceiver(trust, tmp_path / "rx", workers=1)
    try:
        (worker,) = r.service.pool.pids()
        before = rss_kib(worker)
        result = send_files(r.host, r.port, trust.ae_title, [big], max_pdu=131072)
        assert result.statuses == [0]
        growth = (peak_rss_kib(worker) - before) * 1024
        assert growth < 0.5 * size, f"receiver grew by {growth / 2**20:.0f} MiB"
        wait_for(lambda: r.arrived_count() == 1, 120, "study.arrived")
        (key,) = r.quarantine_keys()
        stored = r.store.root / "quarantine" / key
        assert _sha_after_meta(stored) == _sha_after_meta(big)
    finally:
        r.close()


def _sha_after_meta(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        read_preamble(f, False)
        _read_file_meta_info(f)
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
