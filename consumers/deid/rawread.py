"""Reading a Part-10 file's dataset without pydicom's element generator, to the same result.

pydicom's ``dcmread`` walks the dataset with a generator that reads its file object a few
bytes at a time, one element per ``next``: on a 0.5 MB CT of ~200 elements that walk is
about 60 % of the read, the read a quarter of de-identifying the instance. Here the same
elements are cut out of the bytes with ``struct.unpack_from`` and handed to pydicom as the
very ``RawDataElement`` tuples its generator would have made (tag, VR, length, value, value
position, encoding), the file meta group likewise; the preamble and the ``FileDataset``
are still pydicom's own code, so every later step (lazy conversion, sequences read on first access,
the character set) behaves as after ``dcmread``.

Only the plain, common case is taken: a little-endian dataset, explicit or implicit VR as
the file meta names it (and as pydicom's own check of the first element agrees), no
command set, every top-level length defined, every VR one pydicom knows, nothing
truncated. Anything else returns None and the caller reads with ``dcmread`` (an undefined
length sequence, encapsulated pixel data, big endian, a deflated or bare dataset...).
``tests/unit/deid/test_codec_fast.py`` holds the two readers equal on the whole corpus.
"""

from __future__ import annotations

import struct
from io import BytesIO

from pydicom.charset import default_encoding
from pydicom.dataelem import RawDataElement, empty_value_for_VR
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.tag import BaseTag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR

#: the two-letter VRs pydicom's generator accepts as written, as it decodes them
_VRS = {vr.encode(default_encoding): str(vr) for vr in VR}
_LONG = frozenset(v for v in _VRS.values() if v in EXPLICIT_VR_LENGTH_32)
_IMPLICIT = struct.Struct("<HHL")
_EXPLICIT = struct.Struct("<HH2sH")
_LENGTH = struct.Struct("<L")
#: the fields after ``is_little_endian`` at their defaults (``is_raw``, ``is_buffered``)
_DEFAULTS = tuple(
    RawDataElement._field_defaults[f]
    for f in RawDataElement._fields[RawDataElement._fields.index("is_little_endian") + 1 :]
)
_GROUP_LENGTH = BaseTag(0x00020000)
_GROUP_LENGTH_HEADER = b"\x02\x00\x00\x00UL\x04\x00"
_ITEM_END = 0xFFFEE00D
_UNDEFINED = 0xFFFFFFFF


def read(raw: bytes) -> FileDataset | None:
    """The dataset ``dcmread(BytesIO(raw), force=True)`` gives, or None where this reader
    does not go (the caller then uses ``dcmread``). Raises what pydicom's preamble and file
    meta readers raise."""
    fp = BytesIO(raw)
    preamble = read_preamble(fp, True)
    meta = _file_meta(raw, fp.tell())
    if meta is None:
        file_meta = _read_file_meta_info(fp)
    else:
        file_meta, meta_end = meta
        fp.seek(meta_end)
    ts = file_meta.get("TransferSyntaxUID")
    if ts == ExplicitVRLittleEndian:
        implicit = False
    elif ts == ImplicitVRLittleEndian:
        implicit = True
    else:
        return None
    start = fp.tell()
    if start + 8 > len(raw) or raw[start : start + 2] == b"\x00\x00":
        return None  # nothing after the meta, or a command set (group 0000)
    first = raw[start + 4 : start + 6]  # pydicom's check of the first element's VR
    if (not (0x40 < first[0] < 0x5B and 0x40 < first[1] < 0x5B)) != implicit:
        return None  # pydicom would switch encodings (and warn)
    found = _elements(raw, start, implicit)
    if found is None:
        return None
    elements, _end = found
    # straight into the FileDataset (read_partial makes a Dataset first and shares its
    # elements with the FileDataset: the same dictionary, one object fewer to build); the
    # encoding recorded is the FileDataset's, set as read_partial sets it
    fp.seek(len(raw))  # where dcmread leaves it
    result = FileDataset(fp, elements, preamble, file_meta, implicit, True)  # type: ignore[arg-type]
    result.set_original_encoding(implicit, True, result._character_set)
    return result


def _file_meta(raw: bytes, pos: int) -> tuple[FileMetaDataset, int] | None:
    """The file meta group at `pos` as ``_read_file_meta_info`` gives it (its first element
    converted, as that reader's check converts it), and where it ends; None unless it is
    the plain case: explicit VR, starting with a group length that is right."""
    if raw[pos : pos + 8] != _GROUP_LENGTH_HEADER:
        return None
    found = _elements(raw, pos, False, meta=True)
    if found is None:
        return None
    elements, end = found
    file_meta = FileMetaDataset(elements)  # type: ignore[arg-type]  # as a Dataset shares them
    file_meta.set_original_encoding(False, True, default_encoding)
    if file_meta[_GROUP_LENGTH].value != end - (pos + 12):
        return None  # pydicom's reader logs it
    return file_meta, end


def _elements(
    raw: bytes, pos: int, implicit: bool, meta: bool = False
) -> tuple[dict[BaseTag, RawDataElement], int] | None:
    """The elements from `pos` to the end (``meta``: to the first outside group 0002), as
    pydicom's generator yields them, and where they end; None at the first thing it would
    treat specially."""
    end = len(raw)
    out: dict[BaseTag, RawDataElement] = {}
    implicit_header, explicit_header = _IMPLICIT.unpack_from, _EXPLICIT.unpack_from
    long_length, vrs, long_vrs = _LENGTH.unpack_from, _VRS, _LONG
    new, tail = tuple.__new__, _DEFAULTS
    vr: str | None = None
    while pos < end:
        if pos + 8 > end:
            return None
        if implicit:
            group, element, length = implicit_header(raw, pos)
            if meta and group != 2:
                break
            pos += 8
        else:
            group, element, code, length = explicit_header(raw, pos)
            if meta and group != 2:
                break
            vr = vrs.get(code)
            if vr is None:
                return None  # pydicom guesses (implicit switch, or a 2-byte length)
            if vr in long_vrs:
                if pos + 12 > end:
                    return None
                (length,) = long_length(raw, pos + 8)
                pos += 12
            else:
                pos += 8
        tag = group << 16 | element
        if tag == _ITEM_END or length == _UNDEFINED or pos + length > end:
            return None
        value = raw[pos : pos + length] if length else empty_value_for_VR(vr, raw=True)
        key = BaseTag(tag)
        # RawDataElement(key, vr, length, value, pos, implicit, True) without the
        # namedtuple's Python-level __new__ (a third of this loop)
        out[key] = new(RawDataElement, (key, vr, length, value, pos, implicit, True, *tail))
        pos += length
    return out, pos
