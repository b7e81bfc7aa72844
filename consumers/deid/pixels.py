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

from functools import lru_cache

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID, ExplicitVRBigEndian

from .identifiers import Identifiers
from .reasons import Reason

MIN_BYTES = 6
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # Pixel, Float Pixel, Double Float Pixel
_UNDEFINED = 0xFFFFFFFF
_RUN = b"\x01" * MIN_BYTES
_HALF_RUN = b"\x01" * (MIN_BYTES // 2)
_SAMPLE = 8192  # bytes of high bytes looked at before trusting them to be free of text
#: bytes of any UID (always searched: every instance has original UIDs)
_UID_BYTES = frozenset(b"0123456789.")

_Literal = tuple[bytes, str]


def _int(ds: Dataset, keyword: str, default: int | None = None) -> int | None:
    """An image attribute as an int, or ``default`` if absent/empty, or None if unusable."""
    try:
        value = ds.get(keyword)
        if isinstance(value, MultiValue | list | tuple):
            if len(value) != 1:
                return None
            value = value[0]
        if value is None or value == "":
            return default
        number = int(value)
    except (TypeError, ValueError, OverflowError, IndexError, KeyError):
        return None
    return number if number >= 0 else None


def expected_length(ds: Dataset) -> int | None:
    """Bytes of native pixel data the image attributes call for (without the pad byte), or
    None if they are missing or unusable."""
    rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
    samples, bits = _int(ds, "SamplesPerPixel", 1), _int(ds, "BitsAllocated")
    frames = _int(ds, "NumberOfFrames", 1)
    if not rows or not cols or not samples or not bits or frames is None:
        return None
    if bits != 1 and bits % 8:
        return None
    count = rows * cols * samples * max(frames, 1)
    length = (count + 7) // 8 if bits == 1 else count * (bits // 8)
    if str(ds.get("PhotometricInterpretation", "")).strip().upper() == "YBR_FULL_422":
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


@lru_cache(maxsize=256)
def _patient_scanner(
    literals: tuple[tuple[bytes, tuple[str, bool, bool]], ...],
) -> tuple[tuple[_Literal, ...], frozenset[int]]:
    """The patient's literals worth searching in pixels, and the bytes they are made of."""
    chosen = tuple((lit, kind) for lit, (kind, _l, _r) in literals if _worth_searching(lit))
    return chosen, frozenset(b for lit, _kind in chosen for b in lit)


@lru_cache(maxsize=256)
def _table(marked: frozenset[int]) -> tuple[bytes, bytes]:
    """A translate table (1 for a byte that occurs in a literal, in either ASCII case, else 0)
    and the bytes it maps to 0 (to delete them: faster than translating when none is left)."""
    hits = set(marked) | _UID_BYTES
    hits |= {b - 32 for b in hits if 0x61 <= b <= 0x7A}
    hits.discard(0)
    table = bytes(1 if b in hits else 0 for b in range(256))
    return table, bytes(b for b in range(256) if b not in hits)


def identifier_kind(
    chunks: list[bytes], ids: Identifiers, high_byte: int | None = None
) -> str | None:
    """Kind of the first source identifier found in the pixel data bytes ``chunks``, else
    None (see the module docstring for what is searched, and why).

    ``high_byte``: for 16-bit pixels, the offset (0 big endian, 1 little endian) of each
    sample's high byte. Six consecutive text bytes include three consecutive high bytes, and
    the high bytes of CT and MR are small numbers, never text: checking them first settles
    the common case in one strided copy and a translate of half the data.
    """
    chosen, marked = _patient_scanner(ids.byte_literals())
    literals = list(chosen)
    # per instance (not cached): the original UIDs, and phone numbers as bare digits
    extra = [(uid.encode("ascii", "replace"), "original_uid") for uid in ids.uids]
    extra += [(k[6:].encode("ascii"), kind) for k, kind in ids.values.items() if k[:6] == "phone:"]
    literals += [(lit, kind) for lit, kind in extra if _worth_searching(lit)]
    table, others = _table(marked)
    regions: list[bytes] = []
    for chunk in chunks:
        if len(chunk) < MIN_BYTES:
            continue
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
    ds: Dataset, ts: UID, chunks: list[bytes], ids: Identifiers
) -> tuple[Reason, str | None] | None:
    """The verification gate on the output's pixel data (``chunks``: its encoded elements):
    (reason, detail) to hold the instance back, else None."""
    reason = length_reason(ds, ts)
    if reason is not None:
        return reason, None
    found = _pixel_element(ds)
    if found is None or found[2]:
        return None  # no pixels, or compressed ones (not searched: see the module doc)
    high_byte = None
    if found[0] == 0x7FE00010 and _int(ds, "BitsAllocated") == 16:
        high_byte = 0 if ts == ExplicitVRBigEndian else 1
    kind = identifier_kind(chunks, ids, high_byte)
    return (Reason.VERIFICATION_PIXEL_DATA, kind) if kind else None
