"""Free-text values of an encoded dataset, read straight from its bytes.

The verification gate reads the output *as written*, not the ``Dataset`` the writer was
given, so a writer bug cannot hide a leak. pydicom's reader would do, but it builds a
``Dataset`` and converts every value it is asked for; this parser only walks the element
headers, recurses into every sequence item at any depth (defined or undefined lengths,
sequences encoded as UN), and decodes the text VRs (PN LO SH ST LT UT UC UR) with the
character set in force for that item. Anything it does not understand raises ``Malformed``
and the gate falls back to pydicom's reader.
"""

from __future__ import annotations

import struct
from functools import lru_cache

from pydicom.charset import convert_encodings, decode_bytes
from pydicom.datadict import dictionary_VR
from pydicom.valuerep import TEXT_VR_DELIMS

SCANNED_VRS = frozenset({"PN", "LO", "SH", "ST", "LT", "UT", "UC", "UR"})
_SINGLE_VALUED = frozenset({"ST", "LT", "UT", "UR"})
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_CHARSET = 0x00080005
_STRUCTS = {
    little: (struct.Struct(e + "HH"), struct.Struct(e + "H"), struct.Struct(e + "L"))
    for little, e in ((True, "<"), (False, ">"))
}


class Malformed(Exception):
    """The bytes are not a dataset this parser can walk (the caller falls back)."""


@lru_cache(maxsize=4096)
def _dict_vr(tag: int) -> str | None:
    if tag & 0x10000:
        return None  # private: VR unknown without the creator; the byte scan covers it
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


def text_values(
    data: bytes, implicit: bool, little: bool, encodings: list[str] | None = None
) -> list[tuple[str, str]]:
    """``(vr, text)`` for every free-text value at every depth of the encoded dataset
    `data` (multi-valued strings split, trailing padding removed, empty values skipped)."""
    out: list[tuple[str, str]] = []
    pos, _ = _dataset(data, 0, len(data), implicit, little, encodings or ["iso8859"], out)
    if pos != len(data):
        raise Malformed("trailing bytes")
    return out


def _dataset(
    data: bytes,
    pos: int,
    end: int,
    implicit: bool,
    little: bool,
    encodings: list[str],
    out: list[tuple[str, str]],
) -> tuple[int, bool]:
    """Walk elements from `pos` to `end`; return (position, stopped at an item delimiter)."""
    hh, h, ll = _STRUCTS[little]
    while pos < end:
        if pos + 8 > end:
            raise Malformed("truncated element header")
        group, element = hh.unpack_from(data, pos)
        tag = group << 16 | element
        if tag == _ITEM_END:
            return pos + 8, True
        sq_implicit, sq_little = implicit, little
        if implicit:
            vr = _dict_vr(tag)
            (length,) = ll.unpack_from(data, pos + 4)
            pos += 8
        else:
            raw_vr = data[pos + 4 : pos + 6]
            if raw_vr in _LONG_VRS:
                if pos + 12 > end:
                    raise Malformed("truncated element header")
                (length,) = ll.unpack_from(data, pos + 8)
                pos += 12
            else:
                (length,) = h.unpack_from(data, pos + 6)
                pos += 8
            try:
                vr = raw_vr.decode("ascii")
            except UnicodeDecodeError as exc:
                raise Malformed("bad VR") from exc
            if vr == "UN":  # as pydicom: the dictionary VR; UN sequences are implicit LE
                vr = _dict_vr(tag) or "UN"
                sq_implicit, sq_little = True, True
        if vr == "SQ" or (length == UNDEFINED and vr in (None, "UN")):
            pos = _sequence(data, pos, length, end, sq_implicit, sq_little, encodings, out)
            continue
        if length == UNDEFINED or pos + length > end:
            raise Malformed("undefined or overlong value")
        if tag == _CHARSET or vr in SCANNED_VRS:
            value = data[pos : pos + length]
            if tag == _CHARSET:
                terms = value.decode("ascii", "replace").rstrip("\0 ").split("\\")
                encodings = convert_encodings([t.strip() for t in terms])
            elif vr == "UR":
                _add(out, vr, value.decode("latin-1"), single=True)
            else:
                text = decode_bytes(value, encodings, TEXT_VR_DELIMS)
                _add(out, vr, text, single=vr in _SINGLE_VALUED)  # type: ignore[arg-type]
        pos += length
    return pos, False


def _add(out: list[tuple[str, str]], vr: str, text: str, single: bool) -> None:
    for part in (text,) if single else text.split("\\"):
        part = part.strip("\0 ")
        if part:
            out.append((vr, part))


def _sequence(
    data: bytes,
    pos: int,
    length: int,
    end: int,
    implicit: bool,
    little: bool,
    encodings: list[str],
    out: list[tuple[str, str]],
) -> int:
    hh, _h, ll = _STRUCTS[little]
    seq_end = end if length == UNDEFINED else pos + length
    if seq_end > end:
        raise Malformed("sequence longer than its parent")
    while pos < seq_end:
        if pos + 8 > seq_end:
            raise Malformed("truncated item header")
        group, element = hh.unpack_from(data, pos)
        (item_length,) = ll.unpack_from(data, pos + 4)
        tag = group << 16 | element
        pos += 8
        if tag == _SEQ_END and length == UNDEFINED:
            return pos
        if tag != _ITEM:
            raise Malformed("expected an item")
        if item_length == UNDEFINED:
            pos, delimited = _dataset(data, pos, seq_end, implicit, little, encodings, out)
            if not delimited:
                raise Malformed("item without delimiter")
        else:
            item_end = pos + item_length
            if item_end > seq_end:
                raise Malformed("item longer than its sequence")
            pos, delimited = _dataset(data, pos, item_end, implicit, little, encodings, out)
            if delimited or pos != item_end:
                raise Malformed("item delimiter inside a defined-length item")
    if length == UNDEFINED:
        raise Malformed("sequence without delimiter")
    return pos
