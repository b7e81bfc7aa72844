"""The receiver's element walker (``producers/receiver/header.py``) against pydicom, the judge:
element by element on pydicom's own test files, the same files as the receiver stores them
(its File Meta Information in front of the dataset as received), a seeded mutation run and the
fuzz corpus; and the bounded inflater (``inflate.py``) it reads deflated datasets through."""

from __future__ import annotations

import io
import random
import tempfile
import warnings
import zlib
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pydicom
import pytest
from helpers import dicom_bytes as db
from helpers.fuzz import build_corpus
from pydicom.data import get_testdata_files
from pydicom.filereader import data_element_generator, read_partial
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from producers.receiver import acquired, dimse, header, intake
from producers.receiver.header import UNDEFINED, BytesSource, Layout
from smartbox.errors import ConfigError
from smartbox.inflate import (
    RATIO_FLOOR,
    CorruptDeflate,
    InflateLimitExceeded,
    InflateLimits,
    InflatingSource,
)
from smartbox.synthetic import make_ct_study
from smartbox.trusts import parse_trust

FILES = sorted(Path(f) for f in get_testdata_files() if Path(f).is_file())
Values = tuple[str, str, str]


def _values(ds: Any) -> Values | None:
    """What the receiver takes from a dataset pydicom read; None without a study UID."""
    study = str(ds.get("StudyInstanceUID", "") or "").strip()
    modality = str(ds.get("Modality", "") or "").strip().upper()
    sop = str(ds.get("SOPInstanceUID", "") or "").strip()
    return (study, modality, sop) if study else None


def _as_tuple(found: header.Header | None) -> Values | None:
    return None if found is None else (found.study_uid, found.modality, found.sop_instance_uid)


def _judge(data: bytes) -> tuple[bool, Values | None]:
    """(pydicom read it cleanly, what it read) up to (0020,000D), as the receiver asks it:
    any exception or warning means not cleanly."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            ds = read_partial(io.BytesIO(data), stop_when=lambda t, _v, _n: int(t) > 0x0020000D)
            return True, _values(ds)
        except Exception:  # noqa: BLE001 - pydicom refusing is an answer too
            return False, None


def _read_file(data: bytes) -> Values | None:
    """``intake.read_file`` (walker, then pydicom's fallback) on ``data`` as a spool file."""
    with tempfile.TemporaryFile() as f:
        f.write(data)
        f.flush()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            head = data[: intake.HEAD_BYTES]
            return _as_tuple(intake.read_file(f.fileno(), len(data), head, InflateLimits()))


def _wire(syntax: str, dataset: bytes) -> bytes:
    """A file as the receiver stores it: its own File Meta Information, the dataset as sent."""
    return dimse.file_meta(CTImageStorage, "1.2.3.4", syntax) + dataset


def _bundled() -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of pydicom's test files, and of each as the receiver would store it."""
    for path in FILES:
        data = path.read_bytes()
        yield path.name, data
        found = header.layout(data[: intake.HEAD_BYTES])
        if found is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
            syntax = str(meta.TransferSyntaxUID)
            yield f"{path.name} (received)", _wire(syntax, data[found.offset :])


def _dataset(data: bytes, found: Layout) -> bytes:
    body = data[found.offset :]
    return db.inflate(body) if found.syntax.deflated else body


def _pydicom_elements(dataset: bytes, found: Layout) -> list[tuple[int, int, int]]:
    """(tag, value offset, length) of each top-level element, by pydicom's own generator."""
    out = []
    gen = data_element_generator(
        io.BytesIO(dataset), not found.syntax.explicit, found.syntax.little
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for el in gen:
            if isinstance(el, pydicom.dataelem.RawDataElement):
                out.append((int(el.tag), el.value_tell, el.length))
            else:  # an undefined-length sequence, already read
                out.append((int(el.tag), el.file_tell, UNDEFINED))
    return out


def test_walker_reads_every_element_where_pydicom_does() -> None:
    walked_to_the_end = compared = 0
    for name, data in _bundled():
        found = header.layout(data[: intake.HEAD_BYTES])
        if found is None:
            continue
        dataset = _dataset(data, found)
        walked = []
        try:
            for el in header.top_level(BytesSource(dataset), found.syntax):
                walked.append((el.tag, el.offset, el.length))
            walked_to_the_end += 1
            complete = True
        except header.Unreadable:
            complete = False  # it gave up (and says so): what it read before must agree
        try:
            expected = _pydicom_elements(dataset, found)
        except Exception:  # noqa: BLE001 - pydicom cannot read it either
            continue
        compared += 1
        assert walked == (expected if complete else expected[: len(walked)]), name
    assert compared > 250 and walked_to_the_end > 200


def test_walker_values_are_pydicoms_and_the_fallback_gives_pydicoms_answer() -> None:
    walked = fallback = 0
    for name, data in _bundled():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                expected = _values(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True))
            except Exception:  # noqa: BLE001 - nothing to compare with
                continue
        quick = header.read(data)
        if quick is not None:
            walked += 1
            assert _as_tuple(quick) == expected, name
        else:
            fallback += 1
        assert _read_file(data) == expected, name
    assert walked > 250 and fallback > 10


def test_deflated_and_big_endian_study_uid_beyond_the_head() -> None:
    """The study UID after 200 KiB of private data: read through the file / the inflater."""
    ds = make_ct_study(11, series=1, per_series=1).datasets[0]
    ds.private_block(0x0009, "SMARTBOX TEST", create=True).add_new(
        0x01, "OB", random.Random(1).randbytes(200 * 1024)
    )
    expected = (ds.StudyInstanceUID, "CT", ds.SOPInstanceUID)
    for syntax in (ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian):
        enc = db.Encoding.of(syntax)
        dataset = db.encode_dataset(ds, enc)
        wire = _wire(syntax, db.deflate(dataset) if enc.deflated else dataset)
        assert _read_file(wire) == expected, syntax
        assert _judge(wire) == (True, expected)


# --- mutations ---------------------------------------------------------------------------------
def _bases() -> list[tuple[str, bytes]]:
    """(transfer syntax, dataset inflated) of the mutation bases: synthetic CT in four encodings
    and pydicom files with sequences, private groups and other VRs."""
    ct = make_ct_study(5, series=1, per_series=1).datasets[0]
    bases = [
        (syntax, db.encode_dataset(ct, db.Encoding.of(syntax)))
        for syntax in (
            ExplicitVRLittleEndian,
            ImplicitVRLittleEndian,
            ExplicitVRBigEndian,
            DeflatedExplicitVRLittleEndian,
        )
    ]
    for name in ("rtplan.dcm", "test-SR.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm"):
        data = next(p for p in FILES if p.name == name).read_bytes()
        syntax, dataset = db.file_dataset(data)
        bases.append((syntax, dataset))
    return bases


def _mutate(rng: random.Random, syntax: str, dataset: bytes) -> bytes:
    """One seeded mutation of an (inflated) dataset: truncation, a wrong or huge length, a VR
    swap, bit flips in the element headers."""
    enc = db.Encoding.of(syntax)
    els = db.walk(dataset, enc)
    kind = rng.choice(["truncate", "length", "huge", "vr", "flip"])
    el = rng.choice(els)
    if kind == "truncate":
        return dataset[: rng.randrange(len(dataset))]
    if kind in ("length", "huge") and el.length_size:
        length = (
            rng.choice([0, 1, el.length + 2, el.length - 2, rng.randrange(1 << 16), UNDEFINED])
            if kind == "length"
            else rng.choice([0xFFFFFFF0, 0x7FFFFFFF, 0xFFFF, 0xFFFE, 0x10000000])
        )
        return db.put_length(dataset, el, length % (1 << 32), enc)
    if kind == "vr" and el.vr:
        vr = rng.choice([*db.VRS, b"\x00\x00", b"ZZ", b"un", bytes(rng.randbytes(2))])
        at = el.start + 4
        return dataset[:at] + vr + dataset[at + 2 :]
    out = bytearray(dataset)
    for _ in range(rng.choice([1, 2, 4, 8])):
        pos = rng.randrange(min(len(out), max(el.value, 64)))
        out[pos] ^= 1 << rng.randrange(8)
    return bytes(out)


def _check(wire: bytes, label: str) -> str:
    """The walker and the receiver's reading never raise and never disagree with pydicom when
    pydicom reads the file cleanly; returns which of them answered."""
    found = header.layout(wire[: intake.HEAD_BYTES])
    quick: Values | None = None
    if found is not None:
        stream: Any = BytesSource(wire, found.offset)
        if found.syntax.deflated:
            stream = InflatingSource(stream, InflateLimits())
        try:
            quick = _as_tuple(header.walk(stream, found.syntax))
        except CorruptDeflate:
            quick = None  # the inflater's own error: read_file answers None for it
    received = _read_file(wire)
    clean, expected = _judge(wire)
    if clean:
        assert quick is None or quick == expected, label
        assert received is None or received == expected, label
    return "walker" if quick is not None else "fallback" if received is not None else "none"


@pytest.mark.timeout(120)
def test_seeded_mutations_never_raise_hang_or_disagree_with_pydicom() -> None:
    rng = random.Random(20241)
    answered: dict[str, int] = {}
    for syntax, dataset in _bases():
        deflated = db.Encoding.of(syntax).deflated
        for i in range(180):
            mutant = _mutate(rng, syntax, dataset)
            body = db.deflate(mutant) if deflated else mutant
            if deflated and i % 6 == 0:  # the deflate stream itself, cut or flipped
                cut = bytearray(db.deflate(dataset)[: rng.randrange(1, 4096)])
                cut[rng.randrange(len(cut))] ^= 0x10
                body = bytes(cut)
            outcome = _check(_wire(syntax, body), f"{syntax} #{i}")
            answered[outcome] = answered.get(outcome, 0) + 1
    assert sum(answered.values()) == 8 * 180
    # the run exercised all three outcomes, the walker most
    assert answered["walker"] > 300 and answered["fallback"] > 10 and answered["none"] > 100


@pytest.mark.timeout(120)
def test_fuzz_corpus_never_raises_or_disagrees_with_pydicom() -> None:
    cases = [c for c in build_corpus(n=500).cases if c.kind != "deflate_bomb"]
    outcomes = [_check(_wire(c.syntax, c.data), f"{c.index} {c.kind}") for c in cases]
    assert len(outcomes) > 450 and outcomes.count("walker") > 100


# --- the inflater ------------------------------------------------------------------------------
def test_inflater_stops_a_bomb_at_the_ratio_and_reads_real_data_whole() -> None:
    bomb = db.deflate_bomb(b"", 256 << 20, b"")
    stream = InflatingSource(BytesSource(bomb), InflateLimits())
    with pytest.raises(InflateLimitExceeded):
        stream.drain()
    # refused just past the floor: the ratio, not the 1 GiB maximum, stopped it
    assert RATIO_FLOOR < stream.inflated < RATIO_FLOOR + (1 << 20)
    small = InflatingSource(BytesSource(db.deflate_bomb(b"", 4 << 20, b"")), InflateLimits())
    assert small.skip(8 << 20) == 4 << 20 and small.at_end  # under the floor: any ratio
    capped = InflatingSource(BytesSource(bomb), InflateLimits(max_bytes=1 << 20, max_ratio=1e6))
    with pytest.raises(InflateLimitExceeded):
        capped.skip(2 << 20)
    data = random.Random(3).randbytes(3 << 20)
    whole = InflatingSource(BytesSource(db.deflate(data) + b"\0"), InflateLimits())
    assert whole.read(len(data) + 10) == data and whole.at_end  # the pad byte is ignored


def test_inflater_refuses_corrupt_and_truncated_streams() -> None:
    packed = db.deflate(random.Random(4).randbytes(100_000))
    with pytest.raises(CorruptDeflate):
        InflatingSource(BytesSource(packed[:-100]), InflateLimits()).drain()
    with pytest.raises(CorruptDeflate):
        InflatingSource(BytesSource(b"\xff" * 64), InflateLimits()).drain()
    assert zlib.decompress(packed, -zlib.MAX_WBITS)  # the intact stream is fine


def test_inflate_limits_come_from_the_trust_file() -> None:
    raw = {"code": "ABC", "name": "A", "ae_title": "A", "port": 104, "allowed_callers": ["P"]}
    default = parse_trust(Path("ABC.toml"), raw)
    assert (default.max_inflated_bytes, default.max_inflate_ratio) == (512 << 20, 200)
    set_ = parse_trust(
        Path("ABC.toml"), {**raw, "max_inflated_bytes": 1 << 30, "max_inflate_ratio": 50}
    )
    assert (set_.max_inflated_bytes, set_.max_inflate_ratio) == (1 << 30, 50)
    for bad in (
        {"max_inflated_bytes": 1000},
        {"max_inflated_bytes": 2_097_152.5},
        {"max_inflate_ratio": 1},
    ):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            parse_trust(Path("ABC.toml"), {**raw, **bad})


# --- the acquisition date, read at intake for the export's fairness ----------------------------
def _intake(data: bytes) -> header.Header | None:
    with tempfile.TemporaryFile() as f:
        f.write(data)
        f.flush()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return intake.read_file(
                f.fileno(), len(data), data[: intake.HEAD_BYTES], InflateLimits()
            )


def test_the_acquisition_date_read_at_intake_is_the_one_pydicom_reads() -> None:
    """For pydicom's test files and the receiver's copies of them, the date intake records
    (Acquisition, else Content, Series, Study Date) is the one the relay's pydicom reading of
    the spool file gives (``acquired.acquired_on``), wherever that one is known."""
    compared = dated = 0
    for name, data in _bundled():
        found = _intake(data)
        if found is None:
            continue
        with tempfile.NamedTemporaryFile(suffix=".dcm") as f:
            f.write(data)
            f.flush()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                expected = acquired.acquired_on(Path(f.name))
        if expected is None:
            continue  # deflated, a date beyond the first 64 KiB, or none: not comparable
        compared += 1
        assert found.acquired == expected, name
        dated += 1
    assert compared > 100 and dated == compared


@pytest.mark.parametrize(
    "syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian]
)
def test_the_acquisition_date_prefers_acquisition_then_content_series_study(syntax: str) -> None:
    def read(**dates: str) -> Any:
        ds = make_ct_study(12, series=1, per_series=1).datasets[0]
        for keyword in header.DATE_KEYWORDS:
            if keyword in ds:
                delattr(ds, keyword)
        for keyword, value in dates.items():
            setattr(ds, keyword, value)
        enc = db.Encoding.of(syntax)
        dataset = db.encode_dataset(ds, enc)
        found = _intake(_wire(syntax, db.deflate(dataset) if enc.deflated else dataset))
        assert found is not None and found.study_uid == ds.StudyInstanceUID
        return found.acquired

    assert read(StudyDate="20200102", SeriesDate="20200103") == date(2020, 1, 3)
    assert read(StudyDate="20200102", ContentDate="20200104", AcquisitionDate="") == date(
        2020, 1, 4
    )
    assert read(AcquisitionDate="20200105", ContentDate="20200104") == date(2020, 1, 5)
    # not a date where one is expected: the study's age is not known (never a guess)
    assert read(AcquisitionDate="2020-1-05", StudyDate="20200102") is None
    assert read(AcquisitionDate="20201305", StudyDate="20200102") is None
    assert read() is None
