"""The few attributes the receiver needs from each instance, read without building a dataset.

A C-STORE handler needs StudyInstanceUID (0020,000D), Modality (0008,0060) and SOPInstanceUID
(0008,0018). A pydicom Dataset for them costs ~0.4 ms per instance (more than the SHA-256 of a
0.5 MB image), and pydicom inflates a deflated dataset whole, in memory. This walks element
headers instead, in every transfer syntax the receiver accepts (explicit or implicit VR, little
or big endian, deflated), from a ``Source`` that continues past the first 64 KiB (the spool
file) or inflates as it goes (``inflate.InflatingSource``): values it does not need are
skipped, not read, and it stops at the first top-level element after (0020,000D).

It takes the steps pydicom's reader takes (``data_element_generator``, ``read_sequence``,
``read_dataset``) wherever a well-formed file leaves no choice: how a VR is recognised and when
an element is read as implicit VR, when a sequence item is explicit or implicit, where an
undefined length ends. Wherever pydicom would guess or read a truncated value, it gives up
(None) and the caller asks pydicom on a bounded prefix. It is a shortcut, never the judge:
whatever it returns, pydicom reads the same (``tests/unit/test_receiver_header.py``: element
by element on pydicom's own test files, and a seeded mutation run).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime
from typing import NamedTuple

from pydicom import config as pydicom_config
from pydicom.datadict import _dictionary_vr_fast  # pydicom's own rule for implicit VR
from pydicom.filereader import ENCODED_VR
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    PrivateTransferSyntaxes,
)
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

from smartbox.inflate import BytesSource, InflateLimits, InflatingSource, Source

PREAMBLE = 128 + 4  # preamble and "DICM"
STUDY_UID, MODALITY, SOP_INSTANCE = 0x0020000D, 0x00080060, 0x00080018
TRANSFER_SYNTAX = 0x00020010
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
UNDEFINED = 0xFFFFFFFF
LONG_VRS = frozenset(vr.encode() for vr in EXPLICIT_VR_LENGTH_32)
#: the VR each value we read must have (implicit VR: pydicom takes the dictionary's, the same)
WANTED = {STUDY_UID: b"UI", MODALITY: b"CS", SOP_INSTANCE: b"UI"}
#: Acquisition, Content, Series and Study Date, in the order ``acquisition_date`` prefers them
#: (all before the study UID, so the walk passes them anyway): a hint for the export's fairness
DATES = (0x00080022, 0x00080023, 0x00080021, 0x00080020)
_DATE_TAGS = frozenset(DATES)
DATE_KEYWORDS = ("AcquisitionDate", "ContentDate", "SeriesDate", "StudyDate")
_KEEP = frozenset(WANTED) | _DATE_TAGS
MAX_VALUE = 1024  # a UID has at most 64 characters, a CS 16: longer is not a value we trust
MAX_DEPTH = 64  # nested sequences: deeper is a fuzzer's, not a modality's
MAX_ELEMENTS = 200_000  # headers walked before (0020,000D): real files have a few thousand
READ_CHUNK = 64 * 1024


class Unreadable(Exception):
    """The walker cannot tell (malformed, truncated, or a case where pydicom guesses)."""


@dataclass(frozen=True)
class Header:
    study_uid: str
    modality: str
    sop_instance_uid: str
    #: when it was acquired (``acquisition_date``), None if that cannot be told
    acquired: date | None = None


def acquisition_date(values: Iterable[bytes | str | None]) -> date | None:
    """The date of the first value (in ``DATES`` order) of at least 8 characters, as
    YYYYMMDD; None if there is none or it is not a date. A hint only: never raises."""
    for value in values:
        try:
            text = (value.decode("ascii") if isinstance(value, bytes) else value or "").strip("\0 ")
            if len(text) >= 8:
                return datetime.strptime(text[:8], "%Y%m%d").date()
        except ValueError:  # not ASCII, or not a date: the study's age is not known
            return None
    return None


class Syntax(NamedTuple):
    explicit: bool
    little: bool
    deflated: bool


class Layout(NamedTuple):
    syntax: Syntax
    offset: int  # where the dataset starts in the file


class Element(NamedTuple):
    tag: int
    vr: bytes  # b"" when read as implicit VR
    length: int  # UNDEFINED for an undefined-length sequence
    offset: int  # of the value, from the start of the dataset
    value: bytes | None  # read only for the tags asked for


class _Cursor:
    """A read position in a dataset: a buffer refilled from a ``Source``."""

    __slots__ = ("base", "buf", "count", "pos", "src")

    def __init__(self, src: Source, first: bytes = b"", start: int = 0) -> None:
        self.src = src
        self.buf = first
        self.pos = start
        self.base = -start  # tell() counts from ``start``: the dataset's first byte
        self.count = 0

    def tell(self) -> int:
        return self.base + self.pos

    def fill(self, n: int) -> bool:
        """Whether ``n`` bytes are there at the cursor (reading more if need be)."""
        if self.pos + n <= len(self.buf):
            return True
        parts = [self.buf[self.pos :]]
        have = len(parts[0])
        while have < n:
            more = self.src.read(max(n - have, READ_CHUNK))
            if not more:
                break
            parts.append(more)
            have += len(more)
        self.base += self.pos
        self.buf, self.pos = b"".join(parts), 0
        return have >= n

    def need(self, n: int) -> None:
        if not self.fill(n):
            raise Unreadable

    def skip(self, n: int) -> bool:
        """Pass over ``n`` bytes; False if the data ended first."""
        left = len(self.buf) - self.pos
        if n <= left:
            self.pos += n
            return True
        self.base += len(self.buf)
        self.buf, self.pos = b"", 0
        skipped = self.src.skip(n - left)
        self.base += skipped
        return skipped == n - left


class _Order(NamedTuple):
    tag: Callable[[bytes, int], tuple[int, int]]
    u16: Callable[[bytes, int], tuple[int]]
    u32: Callable[[bytes, int], tuple[int]]


def _order(endian: str) -> _Order:
    return _Order(*(struct.Struct(endian + f).unpack_from for f in ("HH", "H", "I")))


_LE, _BE = _order("<"), _order(">")


def _looks_explicit(cur: _Cursor) -> bool | None:
    """pydicom's guess from a dataset's first element (``_is_implicit_vr``): bytes 4-5 are two
    upper-case letters; None if fewer than 6 bytes are left."""
    if not cur.fill(6):
        return None
    a, b = cur.buf[cur.pos + 4], cur.buf[cur.pos + 5]
    return 0x40 < a < 0x5B and 0x40 < b < 0x5B


def elements(
    cur: _Cursor,
    explicit: bool,
    order: _Order,
    *,
    keep: frozenset[int] = frozenset(),
    stop: tuple[int, int] | None = None,
    depth: int = 0,
) -> Iterator[Element]:
    """The elements of one dataset (top level or an item) as pydicom's ``data_element_generator``
    reads them; values are read for ``keep`` tags and passed over otherwise. Ends at an Item
    Delimitation Item, with fewer than 8 bytes left, or (before it) at the first tag outside
    ``stop`` = (lowest, highest)."""
    tag_of, u16, u32 = order
    while True:
        if not cur.fill(8):
            return
        cur.count += 1
        if cur.count > MAX_ELEMENTS:
            raise Unreadable
        buf, pos = cur.buf, cur.pos
        group, elem = tag_of(buf, pos)
        tag = group << 16 | elem
        vr, size = b"", 8
        if not explicit:
            length = u32(buf, pos + 4)[0]
        else:
            vr = buf[pos + 4 : pos + 6]
            if vr in LONG_VRS:
                cur.need(12)
                length, size = u32(cur.buf, cur.pos + 8)[0], 12
            elif vr in ENCODED_VR:
                length = u16(buf, pos + 6)[0]
            elif not b"AA" <= vr <= b"ZZ" and pydicom_config.assume_implicit_vr_switch:
                vr, length = b"", u32(buf, pos + 4)[0]  # pydicom reads this one as implicit
            else:
                raise Unreadable  # an unknown VR: pydicom guesses its length's size
        if tag == ITEM_END:
            cur.pos += size
            return
        if stop is not None and not stop[0] <= tag <= stop[1]:
            return  # at the element's start, as pydicom rewinds to it
        cur.pos += size
        offset = cur.tell()
        if length != UNDEFINED:
            value = None
            if tag in keep:
                if length > MAX_VALUE or not cur.fill(length):
                    raise Unreadable  # pydicom would read a truncated (or huge) value
                value = cur.buf[cur.pos : cur.pos + length]
                cur.pos += length
            else:
                cur.skip(length)  # at the end: pydicom reads a short value, then stops too
            yield Element(tag, vr, length, offset, value)
            continue
        un = vr == b"UN"
        sequence = vr == b"SQ" or (un and pydicom_config.settings.infer_sq_for_un_vr)
        if not sequence and (vr == b"" or (un and pydicom_config.replace_un_with_known_vr)):
            try:
                sequence = _dictionary_vr_fast(tag) == "SQ"
            except KeyError:
                cur.need(4)  # pydicom peeks at the next tag: an item means a sequence
                sequence = tag_of(cur.buf, cur.pos) == (ITEM >> 16, ITEM & 0xFFFF)
        if not sequence or tag in keep or depth >= MAX_DEPTH:
            raise Unreadable  # an undefined-length value: pydicom scans for its delimiter
        _skip_sequence(cur, explicit, order, depth + 1)
        yield Element(tag, vr, UNDEFINED, offset, None)


def _skip_sequence(cur: _Cursor, explicit: bool, order: _Order, depth: int) -> None:
    """Pass over the items of an undefined-length sequence and its delimiter (``read_sequence``)."""
    while True:
        cur.need(8)
        group, elem = order.tag(cur.buf, cur.pos)
        length = order.u32(cur.buf, cur.pos + 4)[0]
        cur.pos += 8
        tag = group << 16 | elem
        if tag == SEQUENCE_END:
            return
        if tag != ITEM:
            raise Unreadable  # pydicom would read it as an item all the same
        start = cur.tell()
        # pydicom reads an item as implicit VR when its first element does not look explicit
        item_explicit = explicit and _looks_explicit(cur) is not False
        items = elements(cur, item_explicit, order, depth=depth)
        if length == UNDEFINED:
            for _ in items:
                pass
        else:
            while cur.tell() - start < length and next(items, None) is not None:
                pass


def _text(element: Element) -> str:
    """A value as pydicom decodes it, then stripped (as the receiver strips pydicom's)."""
    vr = WANTED.get(element.tag, b"UI")
    if element.vr not in (vr, b"") or element.value is None:
        raise Unreadable  # another VR: pydicom would convert it as that VR
    text = element.value.decode("ascii")
    if "\\" in text:
        raise Unreadable  # several values
    if vr == b"UI":
        text = text.rstrip("\0 ")
    elif text.endswith((" ", "\0")):
        text = text[:-1]  # pydicom drops one padding byte of a CS
    return text.strip()


def syntax_of(uid: str) -> Syntax:
    """How pydicom's ``read_partial`` reads the dataset of a file with this transfer syntax."""
    if uid == ImplicitVRLittleEndian:
        return Syntax(False, True, False)
    if uid == ExplicitVRBigEndian:
        return Syntax(True, False, False)
    if uid == DeflatedExplicitVRLittleEndian:
        return Syntax(True, True, True)
    for private in PrivateTransferSyntaxes:
        if uid == private:
            return Syntax(not private.is_implicit_VR, private.is_little_endian, False)
    return Syntax(True, True, False)  # pydicom reads any other syntax as explicit VR LE


def layout(head: bytes) -> Layout | None:
    """Transfer syntax and dataset offset, from the File Meta Information at the start of
    ``head`` (explicit VR little endian, group 0002); None if this walker cannot tell."""
    if head[128:132] != b"DICM":
        return None
    cur = _Cursor(BytesSource(b""), head, PREAMBLE)
    cur.base = 0
    try:
        if _looks_explicit(cur) is False:
            return None  # pydicom would read the meta as implicit VR
        uid = None
        for element in elements(
            cur, True, _LE, keep=frozenset({TRANSFER_SYNTAX}), stop=(0x00020000, 0x0002FFFF)
        ):
            if element.tag == TRANSFER_SYNTAX:
                uid = _text(element)
    except (Unreadable, UnicodeDecodeError):
        return None
    if uid is None or not cur.fill(8):
        return None  # no transfer syntax, or the meta does not end inside the head
    return Layout(syntax_of(uid), cur.tell())


def _start(src: Source, syntax: Syntax, first: bytes, start: int) -> _Cursor:
    """A cursor at the first element, after the checks pydicom makes there."""
    cur = _Cursor(src, first, start)
    if cur.fill(2) and cur.buf[cur.pos : cur.pos + 2] == b"\0\0":
        raise Unreadable  # group 0000 first: pydicom would read a command set
    looks = _looks_explicit(cur)
    if looks is not None and looks != syntax.explicit:
        raise Unreadable  # pydicom would switch to the other VR encoding
    return cur


def top_level(src: Source, syntax: Syntax, first: bytes = b"", start: int = 0) -> Iterator[Element]:
    """Every top-level element of a dataset (as ``walk`` sees them, to the end): for tests and
    diagnostics. Raises ``Unreadable`` where the walker gives up."""
    cur = _start(src, syntax, first, start)
    yield from elements(cur, syntax.explicit, _LE if syntax.little else _BE)


def walk(src: Source, syntax: Syntax, first: bytes = b"", start: int = 0) -> Header | None:
    """StudyInstanceUID, Modality and SOPInstanceUID of the dataset that starts at ``start`` in
    ``first`` and continues in ``src`` (inflated already if it is deflated); None if this
    walker cannot tell. Errors of ``src`` itself (an inflate limit, a corrupt stream) propagate.
    """
    order = _LE if syntax.little else _BE
    try:
        cur = _start(src, syntax, first, start)
        values: dict[int, str] = {}
        dates: dict[int, bytes | None] = {}
        for element in elements(cur, syntax.explicit, order, keep=_KEEP, stop=(0, STUDY_UID)):
            if element.tag in WANTED:
                values[element.tag] = _text(element)  # the last one wins, as in pydicom
            elif element.tag in _DATE_TAGS:
                dates[element.tag] = element.value  # read as it is: a hint, never a failure
    except (Unreadable, UnicodeDecodeError):
        return None
    study = values.get(STUDY_UID, "")
    if not study:
        return None
    return Header(
        study,
        values.get(MODALITY, "").upper(),
        values.get(SOP_INSTANCE, ""),
        acquisition_date(dates.get(tag) for tag in DATES),
    )


def read(data: bytes, limits: InflateLimits | None = None) -> Header | None:
    """The header of a whole file in memory (a deflated one inflated within ``limits``)."""
    found = layout(data[: 64 * 1024])
    if found is None:
        return None
    if found.syntax.deflated:
        stream = InflatingSource(BytesSource(data, found.offset), limits or InflateLimits())
        return walk(stream, found.syntax)
    return walk(BytesSource(b""), found.syntax, data, found.offset)
