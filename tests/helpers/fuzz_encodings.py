"""Mutations of the encoding around a dataset, for ``helpers.fuzz.Mutator``: deflate (valid,
mutated inside, corrupt, bombs), a transfer syntax that does not match the content, odd
character sets, File Meta elements inside the dataset, odd command UIDs and SOP classes, and
valid instances larger than the receiver's 64 KiB head."""

from __future__ import annotations

import random
import zlib
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    MRImageStorage,
)

from . import dicom_bytes as db
from .dicom_bytes import Encoding
from .fuzz_bases import UNCOMPRESSED, Base, reencode

if TYPE_CHECKING:
    from .fuzz import Case

MIB = 1 << 20
#: (inflated size of the zero run, private group: 0x0009 lies before the Study Instance UID);
#: the smallest is under the receiver's default ratio floor (16 MiB): it reaches the anonymiser
BOMBS = [(12 * MIB, 0x0029), (48 * MIB, 0x0029), (256 * MIB, 0x0009), (768 * MIB, 0x0029)]
BOMB_EVERY = 500
CHARSETS = [
    b"ISO_IR 192",
    b"ISO 2022 IR 87",
    b"ISO_IR 999",
    b"\\ISO 2022 IR 149",
    b"GB18030",
    b"ISO-IR 100",
    b"ISO_IR 13\\ISO 2022 IR 87\\ISO_IR 999",
    b"",
]
ODD_TEXT = [b"\xff\xfe", b"\x1b$B\x30\x21\x1b(B", b"\xc3\x28", b"\x00", b"\xe9\xe8", b"\x1b%G\xed"]


class EncodingKinds:
    """Mutation kinds of the encoding; mixed into ``Mutator``, which provides the rest."""

    rng: random.Random
    base: Base
    enc: Encoding
    index: int
    done: list[Any]

    def case(self, kind: str, data: bytes, syntax: str | None = None, **kw: object) -> Any:
        raise NotImplementedError

    def _pick(self, pred: Any = None) -> Any:
        raise NotImplementedError

    def bit_flip(self, data: bytes | None = None) -> bytes:
        raise NotImplementedError

    def clean_large(self) -> Case | tuple[str, bytes] | bytes:
        """A valid instance beyond the receiver's 64 KiB head: deflated, ~190 KiB on the wire
        (several PDUs), or with its Study Instance UID after a 70 KiB private element."""
        b = self.base
        if b.origin != "synthetic":
            return b.data
        if self.rng.random() < 0.5:
            le = Encoding(False, True)
            data = db.set_element(b.data, le, 0x00280010, b"US", (256).to_bytes(2, "little"))
            data = db.set_element(data, le, 0x00280011, b"US", (384).to_bytes(2, "little"))
            data = db.set_element(data, le, db.PIXEL_DATA, b"OW", self.rng.randbytes(256 * 384 * 2))
            return self.case("clean_large", db.deflate(data), DeflatedExplicitVRLittleEndian)
        syntax = self.rng.choice(UNCOMPRESSED)
        enc = Encoding.of(syntax)
        data = b.data if syntax == ExplicitVRLittleEndian else reencode(b, enc)
        data = db.set_element(data, enc, 0x00090010, b"LO", b"FUZZ LARGE")
        data = db.set_element(data, enc, 0x00091010, b"OB", self.rng.randbytes(70 * 1024))
        return syntax, data

    def _explicit(self) -> bytes:
        if self.enc == Encoding(False, True) or self.enc == Encoding(False, True, True):
            return self.base.data
        return reencode(self.base, Encoding(False, True))

    def deflated(self) -> Case:
        return self.case("deflated", db.deflate(self._explicit()), DeflatedExplicitVRLittleEndian)

    def deflate_mutated(self) -> Case:
        explicit = self._explicit()
        as_explicit = replace(self.base, syntax=ExplicitVRLittleEndian, data=explicit)
        other = type(self)(self.rng, as_explicit, self.index, self.done)  # type: ignore[call-arg]
        how = self.rng.choice(
            ["bit_flip", "truncate", "wrong_length", "nested_unclosed", "item_unclosed", "vr_swap"]
        )
        inner = getattr(other, how)()
        return self.case("deflate_mutated", db.deflate(inner), DeflatedExplicitVRLittleEndian)

    def deflate_corrupt(self) -> Case:
        z = db.deflate(self._explicit())
        how = self.rng.choice(["flip", "cut", "zlib_header", "tail", "plain"])
        if how == "flip":
            z = self.bit_flip(z)  # may flip anywhere: the region is the base's pixel start
        elif how == "cut":
            z = z[: self.rng.randrange(1, len(z))]
        elif how == "zlib_header":
            z = zlib.compress(self._explicit())
        elif how == "tail":
            z += bytes(self.rng.randrange(256) for _ in range(64))
        else:
            z = self._explicit()  # not deflated at all, on a deflated context
        return self.case("deflate_corrupt", z, DeflatedExplicitVRLittleEndian)

    def deflate_bomb(self) -> Case:
        data = self._explicit()
        zeros, group = BOMBS[(self.index // BOMB_EVERY) % len(BOMBS)]
        pos = db.insert_at(data, Encoding(False, True), group << 16 | 0x0010)
        creator = db.encode_element(
            group << 16 | 0x0010, b"LO", b"FUZZ BOMB", Encoding(False, True)
        )
        header = group.to_bytes(2, "little") + (0x1010).to_bytes(2, "little")
        header += b"OB\x00\x00" + zeros.to_bytes(4, "little")
        bomb = db.deflate_bomb(data[:pos] + creator + header, zeros, data[pos:])
        return self.case("deflate_bomb", bomb, DeflatedExplicitVRLittleEndian)

    def ts_mismatch(self) -> Case:
        b, enc = self.base, self.enc
        if enc.deflated:
            return self.case("ts_mismatch", db.deflate(b.data), ExplicitVRLittleEndian)
        if b.syntax not in UNCOMPRESSED:  # encapsulated pixel data on a native syntax
            syntax = self.rng.choice([ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        else:
            others = [s for s in UNCOMPRESSED if s != b.syntax]
            syntax = self.rng.choice([*others, DeflatedExplicitVRLittleEndian, JPEGBaseline8Bit])
        return self.case("ts_mismatch", b.data, syntax)

    def charset(self) -> bytes:
        data, enc = self.base.data, self.enc
        data = db.set_element(data, enc, 0x00080005, b"CS", self.rng.choice(CHARSETS))
        el = self._pick(lambda e: e.tag == 0x00100010 and e.depth == 0)
        if el is not None:
            family, _, given = data[el.value : el.value + el.length].rstrip().partition(b"^")
            odd = self.rng.choice(ODD_TEXT)
            data = db.set_element(data, enc, 0x00100010, b"PN", family + odd + b"^" + given + odd)
        return data

    def garbage_meta(self) -> bytes:
        le = Encoding(False, True)
        choices = [
            db.encode_element(0x00020000, b"UL", (0xFFFF0000).to_bytes(4, "little"), le),
            db.encode_element(0x00020001, b"OB", b"\x00\x01", le),
            db.encode_element(0x00020002, b"UI", b"1.2.3.4.5.garbage", le),
            db.encode_element(0x00020003, b"UI", self.base.sop_instance.encode(), le),
            db.encode_element(
                0x00020010,
                b"UI",
                self.rng.choice(
                    [JPEGBaseline8Bit, DeflatedExplicitVRLittleEndian, "1.2.3.4"]
                ).encode(),
                le,
            ),
            db.encode_element(0x00020013, b"SH", b"\xff\xfeFUZZ", le),
        ]
        picked = sorted(self.rng.sample(range(len(choices)), self.rng.randrange(1, 5)))
        return b"".join(choices[i] for i in picked) + self.base.data

    def command_uid(self) -> Case:
        uid = self.base.sop_instance.encode()
        other = self.done[-1].sop_instance if self.done else b"1.2.3"
        new = self.rng.choice(
            [
                b"",
                b"\x00\x00",
                b"1.2." + b"9" * 190 + str(self.index).encode(),
                uid[:40] + b".\xff\xfe" + str(self.index).encode(),
                uid[:40] + b". " + str(self.index).encode(),
                other,
            ]
        )
        return self.case(
            "command_uid",
            self.base.data if not self.enc.deflated else db.deflate(self.base.data),
            sop_instance=new,
        )

    def sop_class_mismatch(self) -> Case:
        data = db.deflate(self.base.data) if self.enc.deflated else self.base.data
        other = MRImageStorage if self.base.sop_class != MRImageStorage else CTImageStorage
        return self.case("sop_class_mismatch", data, command_sop_class=other)
