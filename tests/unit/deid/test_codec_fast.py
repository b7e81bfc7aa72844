"""The fast paths are exact: the chunk writer gives dcmwrite's bytes, and the raw text
parser of the verification gate sees the same text values as pydicom's reader."""

from __future__ import annotations

import io
import zlib

import pytest
from conftest import ct_dataset, planted_dataset, to_bytes
from corpus import BUNDLED, bundled_bytes
from pydicom.charset import convert_encodings
from pydicom.data import get_charset_files
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian
from pydicom.valuerep import PersonName

from consumers.deid import codec
from consumers.deid.rawtext import SCANNED_VRS, Malformed, text_values
from consumers.deid.verify import _dict_vr, _strings


def _corpus() -> list[tuple[str, bytes]]:
    items = [
        ("synth_ct", to_bytes(ct_dataset())),
        ("planted_ct", to_bytes(planted_dataset())),
        ("planted_implicit", to_bytes(planted_dataset(), implicit=True)),
        ("planted_big_endian", to_bytes(planted_dataset(), little=False)),
    ]
    for name, _why in BUNDLED:
        raw = bundled_bytes(name)
        if raw is not None:
            items.append((name, raw))
    for name in ("chrH31.dcm", "chrJapMulti.dcm", "chrX1.dcm", "chrRuss.dcm", "chrArab.dcm"):
        for path in get_charset_files(name):
            items.append((name, open(path, "rb").read()))
    return items


CORPUS = _corpus()
IDS = [n for n, _ in CORPUS]


def _dcmwrite(ds: Dataset, ts: UID) -> bytes:
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ts
    meta.ImplementationClassUID = codec.IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = codec.IMPLEMENTATION_VERSION_NAME
    ds.file_meta = meta
    ds.preamble = b"\x00" * 128
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _inflate(data: bytes, ts: UID) -> bytes:
    if ts != DeflatedExplicitVRLittleEndian:
        return data
    meta_end = 132 + 12 + int.from_bytes(data[140:144], "little")
    return data[:meta_end] + zlib.decompress(data[meta_end:], -zlib.MAX_WBITS)


@pytest.mark.parametrize("converted", [False, True], ids=["raw", "converted"])
@pytest.mark.parametrize(("name", "raw"), CORPUS, ids=IDS)
def test_writer_gives_dcmwrite_bytes(name: str, raw: bytes, converted: bool) -> None:
    ds = codec.read(raw)
    ts = codec.transfer_syntax(ds)
    if converted:  # every element decoded, sequences included (what the walk touches)
        for _elem in ds.iterall():
            pass
        ds.add_new(0x00120064, "SQ", Sequence([Dataset()]))  # a new item, no encoding
        ds[0x00120064].value[0].CodeValue = "113100"
    ours = codec.write(ds, ts)
    assert _inflate(ours.data, ts) == _inflate(_dcmwrite(ds, ts), ts)


def _pydicom_texts(ds: Dataset) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for tag in ds.keys():
        vr = ds.get_item(tag).VR
        if vr is None or vr == "UN":
            vr = _dict_vr(int(tag)) or vr
        if vr == "SQ":
            for item in ds[tag].value or ():
                out += _pydicom_texts(item)
        elif vr in SCANNED_VRS:
            value = ds[tag].value
            if isinstance(value, PersonName):
                value = str(value)
            out += [(vr, t) for t in _strings(value)]
    return out


@pytest.mark.parametrize(("name", "raw"), CORPUS, ids=IDS)
def test_raw_text_parser_matches_pydicom(name: str, raw: bytes) -> None:
    ds = codec.read(raw)
    enc = codec.write(ds, codec.transfer_syntax(ds))
    ours = text_values(enc.body, enc.implicit, enc.little)
    parsed = read_dataset(io.BytesIO(enc.body), enc.implicit, enc.little)
    expected = _pydicom_texts(parsed)
    # pydicom drops empty trailing name component groups ("A^B=C^D=" -> "A^B=C^D")
    assert [(vr, t.rstrip("=") if vr == "PN" else t) for vr, t in ours] == expected
    assert ours or name.startswith(("rtdose", "JPEG2000"))


def test_raw_text_parser_rejects_garbage() -> None:
    with pytest.raises(Malformed):
        text_values(b"\x10\x00\x10\x00PN\x40\x00Smith", False, True)
    with pytest.raises(Malformed):  # sequence without its delimiter
        text_values(b"\x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff", False, True)


def test_charset_in_nested_item_is_honoured() -> None:
    """An item's own Specific Character Set decodes that item's text (Cyrillic here)."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    item = Dataset()
    item.SpecificCharacterSet = "ISO_IR 144"
    item.PatientName = "Люкceмбypг"
    outer = Dataset()
    outer.SpecificCharacterSet = "ISO_IR 100"
    outer.OtherPatientIDsSequence = Sequence([item])
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, outer)
    values = text_values(fp.getvalue(), False, True, convert_encodings("ISO_IR 100"))
    assert values == [("PN", "Люкceмбypг")]


@pytest.mark.parametrize(("name", "raw"), CORPUS, ids=IDS)
def test_collect_from_raw_bytes_matches_decoded_values(name: str, raw: bytes) -> None:
    """Identifiers collected from still-raw elements equal those from decoded ones."""
    from consumers.deid.verify import Identifiers

    fast = Identifiers()
    fast.collect(codec.read(raw), "PatientID")
    decoded = codec.read(raw)
    for _elem in decoded.iterall():  # converts every element
        pass
    slow = Identifiers()
    slow.collect(decoded, "PatientID")
    assert fast.values == slow.values
    assert fast.uids == slow.uids
    assert fast.values or name in ("rtdose.dcm",)


def _dcmread(raw: bytes) -> Dataset:
    from pydicom import dcmread

    return dcmread(io.BytesIO(raw), force=True)


def _normalised(raw: bytes) -> bytes:
    return b"\x00" * 128 + raw if raw[:4] == b"DICM" else raw  # as codec.read does


#: FileDataset attributes that name the file object read from, not its content
_FILE_ATTRS = frozenset({"fileobj_type", "buffer", "filename", "timestamp"})


def _same_read(fast: Dataset, slow: Dataset) -> None:
    """The two readers gave the same dataset: the same element tuples in the same order,
    the same file meta, preamble and encodings, and the same values once converted."""
    assert list(fast._dict.items()) == list(slow._dict.items())
    assert [type(e) for e in fast._dict.values()] == [type(e) for e in slow._dict.values()]
    assert list(fast.file_meta._dict.items()) == list(slow.file_meta._dict.items())
    assert [type(e) for e in fast.file_meta._dict.values()] == [
        type(e) for e in slow.file_meta._dict.values()
    ]
    assert vars(fast.file_meta).keys() == vars(slow.file_meta).keys()
    for name, value in vars(fast.file_meta).items():
        if name != "_dict":
            assert value == vars(slow.file_meta)[name], name
    own, theirs = vars(fast), vars(slow)
    assert own.keys() == theirs.keys()
    for name in own.keys() - _FILE_ATTRS - {"_dict", "file_meta"}:
        assert own[name] == theirs[name], name
    for a, b in zip(fast.iterall(), slow.iterall(), strict=True):  # converts every element
        assert (a.tag, a.VR, a.value, a.is_undefined_length) == (
            b.tag,
            b.VR,
            b.value,
            b.is_undefined_length,
        )
    assert fast == slow


@pytest.mark.parametrize(("name", "raw"), CORPUS, ids=IDS)
def test_raw_reader_matches_dcmread(name: str, raw: bytes) -> None:
    """Where ``rawread`` reads a file, it gives what ``dcmread`` gives; elsewhere None."""
    from consumers.deid import rawread

    raw = _normalised(raw)
    fast = rawread.read(raw)
    if fast is not None:
        _same_read(fast, _dcmread(raw))


def test_raw_reader_takes_the_plain_cases() -> None:
    """Explicit and implicit VR little endian with defined lengths are read by ``rawread``
    (so the test above compares something), on most of the corpus."""
    from consumers.deid import rawread

    read = [name for name, raw in CORPUS if rawread.read(_normalised(raw)) is not None]
    assert {"synth_ct", "planted_ct", "planted_implicit"} <= set(read)
    assert "planted_big_endian" not in read
    assert len(read) >= len(CORPUS) // 2


def _meta_group_length(delta: int) -> bytes:
    raw = to_bytes(ct_dataset())
    length = int.from_bytes(raw[140:144], "little") + delta
    return raw[:140] + length.to_bytes(4, "little") + raw[144:]


def _meta_without_group_length() -> bytes:
    raw = to_bytes(ct_dataset())
    return raw[:132] + raw[144:]


@pytest.mark.parametrize(
    "raw",
    [_meta_group_length(2), _meta_group_length(-2), _meta_without_group_length()],
    ids=["group_length_long", "group_length_short", "no_group_length"],
)
def test_raw_reader_odd_file_meta(raw: bytes) -> None:
    """A file meta whose group length is wrong or missing is read by pydicom's meta reader
    (which logs it); the result is still ``dcmread``'s."""
    from consumers.deid import rawread

    assert rawread._file_meta(raw, 132) is None
    fast = rawread.read(raw)
    assert fast is not None
    _same_read(fast, _dcmread(raw))


def _undefined_sequence() -> bytes:
    ds = planted_dataset()
    ds.ReferencedImageSequence = Sequence([Dataset()])
    ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID = "1.2.3.4"
    ds["ReferencedImageSequence"].is_undefined_length = True
    return to_bytes(ds)


def _command_set() -> bytes:
    raw = to_bytes(ct_dataset(), implicit=True)  # a command set is implicit VR
    meta_end = 132 + 12 + int.from_bytes(raw[140:144], "little")
    group_length = b"\x00\x00\x00\x00\x04\x00\x00\x00\x00\x00\x00\x00"  # (0000,0000) UL 0
    return raw[:meta_end] + group_length + raw[meta_end:]


def _explicit_declared_implicit() -> bytes:
    raw = to_bytes(ct_dataset())
    return raw.replace(b"1.2.840.10008.1.2.1\x00", b"1.2.840.10008.1.2\x00\x00\x00", 1)


def _unknown_vr() -> bytes:
    raw = to_bytes(ct_dataset())
    at = raw.index(b"CS", 132 + 12 + int.from_bytes(raw[140:144], "little"))
    return raw[:at] + b"QQ" + raw[at + 2 :]


DECLINED = {
    "undefined_length_sequence": _undefined_sequence,
    "big_endian": lambda: to_bytes(planted_dataset(), little=False),
    "truncated": lambda: to_bytes(ct_dataset())[:-3],
    "command_set": _command_set,
    "meta_says_implicit_data_explicit": _explicit_declared_implicit,
    "unknown_vr": _unknown_vr,
}


@pytest.mark.parametrize("case", sorted(DECLINED))
def test_raw_reader_declines_what_pydicom_treats_specially(case: str) -> None:
    """Undefined lengths, other encodings, truncation, a command set, an encoding that
    disagrees with the meta, an unknown VR: left to ``dcmread`` (and codec.read still
    reads them as it does)."""
    import warnings

    from consumers.deid import rawread

    raw = DECLINED[case]()
    assert rawread.read(raw) is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            slow = _dcmread(raw)
        except Exception:  # noqa: BLE001 - what pydicom refuses, codec.read refuses too
            with pytest.raises(codec.Unparseable):
                codec.read(raw)
            return
        if "SOPInstanceUID" in slow:
            _same_read(codec.read(raw), slow)


@pytest.mark.parametrize(("name", "raw"), CORPUS, ids=IDS)
def test_process_output_same_with_either_reader(
    name: str, raw: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The de-identifier's whole result (bytes, reason, UIDs) is the same whether the file
    was read by ``rawread`` or by ``dcmread``."""
    from consumers.deid import Deidentifier, DeidPolicy, PseudonymKey, rawread

    deid = Deidentifier(PseudonymKey(b"reader-test-secret-0123", "k1"), DeidPolicy("RTK"))
    fast = deid.process(raw)
    monkeypatch.setattr(rawread, "read", lambda _raw: None)
    slow = deid.process(raw)
    assert (fast.ok, fast.reason, fast.detail, fast.data) == (
        slow.ok,
        slow.reason,
        slow.detail,
        slow.data,
    )
    assert (fast.study_uid, fast.sop_instance_uid, fast.patient_pseudonym) == (
        slow.study_uid,
        slow.sop_instance_uid,
        slow.patient_pseudonym,
    )
