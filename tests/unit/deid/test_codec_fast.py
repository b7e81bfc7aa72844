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
