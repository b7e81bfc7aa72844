"""The verification gate's look at native pixel data: its length, and identifiers in its bytes.

Pixel data is copied from the source byte for byte, so whatever sits in it leaves with the
image. A malformed instance can make the reader take element bytes for pixels (one moved an
accession number and an MRN into what pydicom read as Pixel Data), so:

* **length**: native pixel data must be Rows x Columns x Samples per Pixel x Bits Allocated
  / 8 x Number of Frames bytes (1-bit data packed, YBR_FULL_422 two samples per pixel),
  plus at most the one pad byte that makes an odd length even; anything else, or missing
  or unusable image attributes, holds the instance back (``pixel_data_length_mismatch``);
* **identifiers**: the source's identifiers, encoded as the byte scan of the rest of the file
  encodes them (UTF-8, Latin-1, the instance's character sets; ASCII case-insensitive), are
  searched in the pixel bytes (``verification_failed:pixel_data``, detail: the kind).

Only identifiers of ``MIN_BYTES`` or more encoded bytes with at least three distinct byte
values are searched: a shorter one would match image content by chance. Uniform 8-bit pixels
match a given 6-byte literal at a given offset with probability 2^-42 (ASCII case folded),
so ~100 literals over 0.5 MB give about one false hold-back in 10^5 instances, and 16-bit
CT/MR cannot match at all (every other byte is a high byte below 0x10, never a text byte);
the distinct-byte rule drops values like ``000000`` that a flat region of an 8-bit image
would match. Shorter identifiers (most surnames are 5+ letters, but not all) stay the
pixel gate's and the OCR verifier's job. Compressed (encapsulated) pixel data is not
searched: its bytes are entropy-coded, so text in it is not the text's bytes.

Speed (C-level bytes operations only): for 16-bit pixels the high bytes are checked first (a
strided copy and one ``translate``): six text bytes in a row include three high bytes that are
text bytes, and CT/MR high bytes never are, so ordinary CT and MR are done there (~0.15 ms per
0.5 MB). Otherwise one ``translate`` maps each pixel byte to 1 if it occurs in any literal and
``find`` collects the runs of ``MIN_BYTES`` or more such bytes; only those runs are searched
for each literal. Pixels whose bytes look like text (8-bit images, uniform noise) pay the
full scan, ~0.5 ms per 0.5 MB.
"""

from __future__ import annotations

import struct
from functools import lru_cache

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.uid import UID, ExplicitVRBigEndian

from .identifiers import Identifiers
from .reasons import Reason

MIN_BYTES = 6
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # Pixel, Float Pixel, Double Float Pixel
_UNDEFINED = 0xFFFFFFFF
_RUN = b"\x01" * MIN_BYTES
_HALF_RUN = b"\x01" * (MIN_BYTES // 2)
_SAMPLE = 8192  # bytes of high bytes looked at before trusting them to be free of text
#: a chunk shorter than this is an element header (tag, VR, length), not pixel values
_HEADER_MAX = 16

_Literal = tuple[bytes, str]
_US = {True: struct.Struct("<H"), False: struct.Struct(">H")}
_TAGS = {
    kw: BaseTag(tag_for_keyword(kw) or 0)
    for kw in (
        "Rows",
        "Columns",
        "SamplesPerPixel",
        "BitsAllocated",
        "NumberOfFrames",
        "BitsStored",
        "HighBit",
        "PixelRepresentation",
    )
}
_VRS = {kw: dictionary_VR(tag) for kw, tag in _TAGS.items()}
_PHOTOMETRIC = BaseTag(0x00280004)


def image_int(ds: Dataset, keyword: str, default: int | None = None) -> int | None:
    """An image attribute as an int, or ``default`` if absent/empty, or None if unusable
    (negative, multi-valued, not a number). A US or IS value still raw is read from its
    bytes (converting the element costs more than all the rest of this check)."""
    tag = _TAGS[keyword]
    elem = ds._dict.get(tag)  # by tag: no keyword lookup
    if elem is None:
        return default
    try:
        value: object
        if isinstance(elem, RawDataElement) and elem.value is not None:
            vr = elem.VR or _VRS[keyword]
            if vr == "US" and len(elem.value) in (0, 2):
                if not elem.value:
                    return default
                value = _US[bool(elem.is_little_endian)].unpack(elem.value)[0]
            elif vr == "IS" and b"\\" not in elem.value:
                value = elem.value.decode("ascii").strip(" \0")
            else:
                value = ds[tag].value
        else:
            value = ds[tag].value
        if isinstance(value, MultiValue | list | tuple):
            if len(value) != 1:
                return None
            value = value[0]
        if value is None or value == "":
            return default
        number = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError, IndexError, KeyError, UnicodeError):
        return None
    return number if number >= 0 else None


def _photometric(ds: Dataset) -> str:
    """Photometric Interpretation, upper case (read from the raw bytes if still raw)."""
    elem = ds._dict.get(_PHOTOMETRIC)
    if elem is None:
        return ""
    if isinstance(elem, RawDataElement) and isinstance(elem.value, bytes):
        return elem.value.decode("latin-1").strip(" \0").upper()
    return str(ds[_PHOTOMETRIC].value).strip().upper()


def expected_length(ds: Dataset) -> int | None:
    """Bytes of native pixel data the image attributes call for (without the pad byte), or
    None if they are missing or unusable."""
    rows, cols = image_int(ds, "Rows"), image_int(ds, "Columns")
    samples, bits = image_int(ds, "SamplesPerPixel", 1), image_int(ds, "BitsAllocated")
    frames = image_int(ds, "NumberOfFrames", 1)
    if not rows or not cols or not samples or not bits or frames is None:
        return None
    if bits != 1 and bits % 8:
        return None
    count = rows * cols * samples * max(frames, 1)
    length = (count + 7) // 8 if bits == 1 else count * (bits // 8)
    if _photometric(ds) == "YBR_FULL_422":
        length = length // 3 * 2
    return length


def _pixel_element(ds: Dataset) -> tuple[int, int, bool] | None:
    """(tag, length, undefined length) of the pixel data element, or None if there is none."""
    for tag in _PIXEL_TAGS:
        if tag in ds:
            elem = ds.get_item(tag)
            if isinstance(elem, RawDataElement):
                if elem.length == _UNDEFINED:
                    return tag, 0, True
                return tag, len(elem.value) if elem.value is not None else elem.length, False
            value = ds[tag].value
            return tag, len(value) if isinstance(value, bytes | bytearray) else -1, False
    return None


def length_reason(ds: Dataset, ts: UID) -> Reason | None:
    """``pixel_data_length_mismatch`` if native pixel data does not fit the image attributes,
    or its encoding contradicts the transfer syntax (compressed syntax with defined-length
    Pixel Data, or a native syntax with undefined-length), else None."""
    found = _pixel_element(ds)
    if found is None:
        return None
    tag, length, undefined = found
    encapsulated = tag == 0x7FE00010 and ts.is_transfer_syntax and ts.is_encapsulated
    if undefined or encapsulated:
        return None if undefined and encapsulated else Reason.PIXEL_DATA_LENGTH_MISMATCH
    expected = expected_length(ds)
    if expected is None or not (length == expected or (expected % 2 and length == expected + 1)):
        return Reason.PIXEL_DATA_LENGTH_MISMATCH
    return None


def _worth_searching(literal: bytes) -> bool:
    return len(literal) >= MIN_BYTES and len(set(literal)) >= 3 and b"\x00" not in literal


Lanes = tuple[frozenset[int], ...]


@lru_cache(maxsize=64)
def _allowed(lanes: Lanes) -> tuple[frozenset[int], ...]:
    """Per cell byte, the lower-case literal bytes that can match it (ASCII case folded)."""
    return tuple(lane | {b + 32 for b in lane if 0x41 <= b <= 0x5A} for lane in lanes)


def _can_occur(literal: bytes, lanes: Lanes) -> bool:
    """Whether `literal` (lower case; matched ASCII case-insensitively) can be written by
    pixel cells whose byte ``i`` can only hold ``lanes[i]``, at some alignment."""
    allowed = _allowed(lanes)
    n = len(allowed)
    if len(literal) >= n and any(lane.isdisjoint(literal) for lane in allowed):
        return False  # every alignment puts some of it in a cell byte that holds none of it
    return any(
        all(allowed[(start + k) % n].issuperset(literal[k::n]) for k in range(n))
        for start in range(n)
    )


@lru_cache(maxsize=256)
def _patient_scanner(
    literals: tuple[tuple[bytes, tuple[str, bool, bool]], ...], lanes: Lanes | None
) -> tuple[tuple[_Literal, ...], frozenset[int]]:
    """The patient's literals worth searching in pixels (and able to occur in pixel cells
    of this layout), and the bytes they are made of."""
    chosen = tuple(
        (lit, kind)
        for lit, (kind, _l, _r) in literals
        if _worth_searching(lit) and (lanes is None or _can_occur(lit, lanes))
    )
    return chosen, frozenset(b for lit, _kind in chosen for b in lit)


@lru_cache(maxsize=256)
def _table(marked: frozenset[int]) -> tuple[bytes, bytes]:
    """A translate table (1 for a byte that occurs in a literal, in either ASCII case, else 0)
    and the bytes it maps to 0 (to delete them: faster than translating when none is left)."""
    hits = set(marked)
    hits |= {b - 32 for b in hits if 0x61 <= b <= 0x7A}
    hits.discard(0)
    table = bytes(1 if b in hits else 0 for b in range(256))
    return table, bytes(b for b in range(256) if b not in hits)


def identifier_kind(
    chunks: list[bytes],
    ids: Identifiers,
    high_byte: int | None = None,
    lanes: Lanes | None = None,
) -> str | None:
    """Kind of the first source identifier found in the pixel data bytes ``chunks``, else
    None (see the module docstring for what is searched, and why).

    ``lanes``: the byte values each byte of a pixel cell can hold (``pixel_bits.lane_values``,
    after the bits outside Bits Stored were cleared). A literal that no alignment of cells
    can spell is not searched at all: 12-bit CT and MR, whose high bytes are 0x00-0x0F,
    cannot hold a single byte of text in every other position, so nothing is searched.

    ``high_byte``: for 16-bit pixels, the offset (0 big endian, 1 little endian) of each
    sample's high byte. Six consecutive text bytes include three consecutive high bytes:
    when the high bytes hold no run of three literal bytes, nothing can match either.
    """
    chosen, _marked = _patient_scanner(ids.byte_literals(), lanes)
    literals = list(chosen)
    # per instance (not cached): the original UIDs, and phone / NHS numbers as bare digits
    extra = [(uid.encode("ascii", "replace"), "original_uid") for uid in ids.uids]
    extra += [(digits.encode("ascii"), kind) for digits, kind in ids.digit_strings()]
    literals += [
        (lit, kind)
        for lit, kind in extra
        if _worth_searching(lit) and (lanes is None or _can_occur(lit, lanes))
    ]
    if not literals:
        return None
    # element headers are our own writing (tag, VR, length), never text: values only
    values = [c for c in chunks if len(c) >= _HEADER_MAX]
    table, others = _table(frozenset(b for lit, _kind in literals for b in lit))
    regions: list[bytes] = []
    for chunk in values:
        if high_byte is not None and 1 not in chunk[high_byte:_SAMPLE:2].translate(table):
            high = chunk[high_byte::2]  # (a sample with text bytes: noise-like, skip this)
            if not high.translate(None, others) or _HALF_RUN not in high.translate(table):
                continue
        mask = chunk.translate(table)
        start = mask.find(_RUN)
        while start != -1:  # every run of text bytes long enough to hold an identifier
            end = mask.find(b"\x00", start + MIN_BYTES)
            end = len(mask) if end == -1 else end
            regions.append(chunk[start:end])
            start = mask.find(_RUN, end)
    if not regions:
        return None
    # a match lies inside one run; NUL (never a text byte) keeps runs apart
    haystack = b"\x00".join(regions).lower()
    for literal, kind in literals:
        if literal in haystack:
            return kind
    return None


def pixel_reason(
    ds: Dataset,
    ts: UID,
    chunks: list[bytes],
    ids: Identifiers,
    lanes: Lanes | None = None,
) -> tuple[Reason, str | None] | None:
    """The verification gate on the output's pixel data (``chunks``: its encoded elements):
    (reason, detail) to hold the instance back, else None. ``lanes``: see
    ``identifier_kind``."""
    reason = length_reason(ds, ts)
    if reason is not None:
        return reason, None
    found = _pixel_element(ds)
    if found is None or found[2]:
        return None  # no pixels, or compressed ones (not searched: see the module doc)
    high_byte = None
    if found[0] != 0x7FE00010:
        lanes = None  # the layout describes Pixel Data, not float pixels
    elif image_int(ds, "BitsAllocated") == 16:
        high_byte = 0 if ts == ExplicitVRBigEndian else 1
    kind = identifier_kind(chunks, ids, high_byte, lanes)
    return (Reason.VERIFICATION_PIXEL_DATA, kind) if kind else None
