"""The one bounded inflater: a deflated dataset inflated a piece at a time, never whole.

Deflated Explicit VR Little Endian (PS3.5 A.5) is a raw deflate stream after the File Meta
Information. pydicom inflates it whole, in memory: 1 MiB of deflated zeros made one SCP worker
grow to 1.05 GB. Here the stream is inflated at most ``OUT_CHUNK`` bytes at a time
(``zlib.decompressobj`` with ``max_length``), so memory stays at a few hundred KiB whatever it
inflates to, and it is refused (``InflateLimitExceeded``) as soon as it inflates beyond a trust's
limits (``max_inflated_bytes``, ``max_inflate_ratio`` in its trust file).

The receiver (which refuses such an instance with 0xA700) and the anonymiser (which holds it
back as ``decompression_limit``) both inflate through this module with the trust's
``InflateLimits``: one accounting, so what the receiver accepts the anonymiser reads.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Protocol

from .errors import ConfigError

IN_CHUNK = 64 * 1024
OUT_CHUNK = 256 * 1024
_MIB = 1 << 20
#: the ratio is judged only beyond this much output: small instances (a blank 256x256 image,
#: a short SR) can deflate a thousandfold and are harmless
RATIO_FLOOR = 16 * _MIB
#: a deflated dataset may inflate to at most this many bytes (trust key ``max_inflated_bytes``)
DEFAULT_MAX_INFLATED_BYTES = 512 * _MIB
#: ... and, beyond ``RATIO_FLOOR``, to at most this many times the deflated bytes read so far
#: (``max_inflate_ratio``): real images deflate 2-20 to 1; deflated zeros a thousand to 1
DEFAULT_MAX_INFLATE_RATIO = 200.0


class Source(Protocol):
    """Bytes read forward only (a file range, a buffer, an inflated stream)."""

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes; fewer only at the end, ``b""`` after it."""
        ...

    def skip(self, n: int) -> int:
        """Pass over up to ``n`` bytes; how many there were."""
        ...


class InflateLimitExceeded(Exception):
    """The deflated dataset inflates beyond the configured size or ratio."""


class CorruptDeflate(Exception):
    """The deflate stream is malformed or ends before its last block."""


@dataclass(frozen=True)
class InflateLimits:
    """How far a deflated dataset may inflate: at most ``max_bytes``, and beyond the first
    ``ratio_floor`` bytes at most ``max_ratio`` times the deflated bytes read so far.

    The floor lets small, very compressible files through (a blank 256x256 image deflates to
    a few hundred bytes); real deflated images compress 2-20 fold. Bad values are a
    ``ConfigError`` (they come from a trust file)."""

    max_bytes: int = DEFAULT_MAX_INFLATED_BYTES
    max_ratio: float = DEFAULT_MAX_INFLATE_RATIO
    ratio_floor: int = RATIO_FLOOR

    def __post_init__(self) -> None:
        if not 1 <= self.max_bytes <= 1 << 40 or not 1 <= self.ratio_floor:
            raise ConfigError("inflate limits: 1 <= ratio_floor, 1 <= max_bytes <= 1 TiB")
        if not 2 <= self.max_ratio <= 1_000_000:
            raise ConfigError("inflate limits: max_ratio must be between 2 and 1000000")

    @classmethod
    def of_trust(cls, max_inflated_bytes: int, max_inflate_ratio: float) -> InflateLimits:
        """The limits of a trust file's ``max_inflated_bytes`` and ``max_inflate_ratio``."""
        return cls(max_inflated_bytes, max_inflate_ratio)

    def exceeded(self, inflated: int, deflated: int) -> bool:
        """Whether ``inflated`` bytes out of ``deflated`` bytes read is beyond the limits."""
        if inflated > self.max_bytes:
            return True
        return inflated > self.ratio_floor and inflated > self.max_ratio * max(deflated, 1)


class BytesSource:
    """A ``Source`` over bytes in memory, from ``start``."""

    def __init__(self, data: bytes, start: int = 0) -> None:
        self._data = data
        self._pos = start

    def read(self, n: int) -> bytes:
        chunk = self._data[self._pos : self._pos + n]
        self._pos += len(chunk)
        return chunk

    def skip(self, n: int) -> int:
        k = max(0, min(n, len(self._data) - self._pos))
        self._pos += k
        return k


class InflatingSource:
    """The inflated bytes of the raw deflate stream in ``raw``, as a ``Source``.

    Raises ``InflateLimitExceeded`` past ``limits`` and ``CorruptDeflate`` on a malformed or
    truncated stream (pydicom cannot read those either). Bytes after the end of the stream (the
    optional pad byte of PS3.5 A.5) are ignored, as pydicom ignores them.
    """

    def __init__(self, raw: Source, limits: InflateLimits) -> None:
        self._raw = raw
        self._limits = limits
        self._z = zlib.decompressobj(-zlib.MAX_WBITS)
        self._input = b""
        self.inflated = 0
        self.deflated = 0

    @property
    def at_end(self) -> bool:
        """Whether the deflate stream has ended (its last block was read)."""
        return self._z.eof

    def _piece(self, want: int) -> bytes:
        """Up to ``want`` (> 0) more inflated bytes; ``b""`` at the end of the stream."""
        while not self._z.eof:
            if not self._input:
                self._input = self._raw.read(IN_CHUNK)
                if not self._input:
                    raise CorruptDeflate("deflate stream ends before its last block")
                self.deflated += len(self._input)
            try:
                piece = self._z.decompress(self._input, min(want, OUT_CHUNK))
            except zlib.error as exc:
                raise CorruptDeflate(str(exc)) from None
            self._input = self._z.unconsumed_tail
            if piece:
                self.inflated += len(piece)
                if self._limits.exceeded(self.inflated, self.deflated):
                    raise InflateLimitExceeded(
                        f"inflates beyond {self.inflated} bytes from {self.deflated}"
                    )
                return piece
        return b""

    def read(self, n: int) -> bytes:
        """Up to ``n`` inflated bytes; fewer only at the end of the stream."""
        parts, got = [], 0
        while got < n:
            piece = self._piece(n - got)
            if not piece:
                break
            parts.append(piece)
            got += len(piece)
        return b"".join(parts)

    def skip(self, n: int) -> int:
        """Inflate and discard up to ``n`` bytes; how many there were."""
        done = 0
        while done < n:
            piece = self._piece(n - done)
            if not piece:
                break
            done += len(piece)
        return done

    def drain(self) -> None:
        """Inflate the rest of the stream, discarding it: only to enforce the limits and find a
        corrupt or truncated stream."""
        while self._piece(OUT_CHUNK):
            pass

    def read_all(self) -> bytes:
        """The whole inflated stream (within the limits): for a reader that needs it in memory.

        Raises ``CorruptDeflate`` if the stream is malformed or ends before its last block."""
        parts = []
        while piece := self._piece(OUT_CHUNK):
            parts.append(piece)
        return b"".join(parts)
