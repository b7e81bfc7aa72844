"""Reading Deflated Explicit VR Little Endian instances without trusting their size.

pydicom inflates a deflated dataset whole (``zlib.decompress``), so a 1 MiB stream of zeros
becomes ~1 GiB in memory before a single element is read. Here the stream is inflated by the
shared bounded inflater (``smartbox.inflate``, the receiver's too), checked against the trust's
``InflateLimits`` after every step, and only then handed to pydicom's dataset reader.
"""

from __future__ import annotations

from io import BytesIO

from pydicom.dataset import Dataset, FileDataset
from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble
from pydicom.uid import DeflatedExplicitVRLittleEndian

from smartbox.inflate import (
    BytesSource,
    CorruptDeflate,
    InflateLimitExceeded,
    InflateLimits,
    InflatingSource,
)

_DEFLATED_UID = str(DeflatedExplicitVRLittleEndian).encode("ascii")
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)

#: Inflating the dataset would exceed the trust's ``InflateLimits`` (held back as
#: ``decompression_limit``): the shared inflater's own exception, so both stages agree.
DecompressionLimit = InflateLimitExceeded


def inflate(data: bytes, limits: InflateLimits, offset: int = 0) -> bytes:
    """Inflate the raw deflate stream (PS3.5 A.5) at ``data[offset:]`` in bounded steps.

    Raises DecompressionLimit as soon as the output passes ``limits`` (so a bomb never exists
    whole in memory) and ``ValueError`` if the stream is corrupt or truncated.
    """
    try:
        return InflatingSource(BytesSource(data, offset), limits).read_all()
    except CorruptDeflate as exc:
        raise ValueError("corrupt or truncated deflate stream") from exc


def _meta_end(raw: bytes) -> int:
    """Where the file meta group (explicit VR little endian after ``DICM``) ends; the whole
    length when the file has no marker or its meta cannot be walked (then every byte is
    searched for the deflated UID: slower, never wrong)."""
    if raw[128:132] != b"DICM":
        return len(raw)
    pos = 132
    while pos + 8 <= len(raw) and raw[pos : pos + 2] == b"\x02\x00":
        vr = raw[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            pos += 12 + int.from_bytes(raw[pos + 8 : pos + 12], "little")
        elif vr.isalpha() and vr.isupper():
            pos += 8 + int.from_bytes(raw[pos + 6 : pos + 8], "little")
        else:
            return len(raw)
    return min(pos, len(raw))


def read_deflated(raw: bytes, limits: InflateLimits) -> Dataset | None:
    """The dataset of a deflated Part-10 file, inflated within ``limits``; None if the file
    is not deflated (then ``dcmread`` reads it as it is).

    The file meta is read with pydicom's own meta reader and the inflated dataset with its
    dataset reader: exactly what ``dcmread`` does after its own, unbounded, inflate.
    """
    if _DEFLATED_UID not in raw[: _meta_end(raw)]:
        return None  # the meta is never compressed: no deflated UID in it, not deflated
    fp = BytesIO(raw)
    preamble = read_preamble(fp, True)
    meta = _read_file_meta_info(fp)  # private, but pydicom is pinned to major version 3
    if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        return None
    buffer = BytesIO(inflate(raw, limits, fp.tell()))
    dataset = read_dataset(buffer, False, True)
    ds = FileDataset(buffer, dataset, preamble, meta, False, True)
    ds.set_original_encoding(False, True, dataset._character_set)
    return ds
