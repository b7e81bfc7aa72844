"""A seeded corpus of mutated DICOM datasets for the end-to-end fuzz run.

Bases are synthetic identifiable CT instances (``smartbox.synthetic``) and pydicom's bundled
test files with the study's identifiers planted in them, grouped into studies so that every
study mixes clean and mutated instances. Mutations are applied to the encoded bytes (never
re-encoded by a DICOM library afterwards): bit flips, truncation, wrong and huge lengths, VR
swaps, sequences nested thousands deep and never closed, undefined-length items never closed,
empty datasets, deflated payloads (valid, corrupt, bombs), a transfer syntax that does not
match the content, odd character sets, File Meta elements inside the dataset, odd command
UIDs, exact resends and new versions. The same seed always gives the same corpus.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field, replace
from functools import cached_property

from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from . import dicom_bytes as db
from .dicom_bytes import UNDEFINED, Element, Encoding
from .fuzz_bases import UNCOMPRESSED, Base, reencode, study_bases
from .fuzz_encodings import BOMB_EVERY, EncodingKinds

DEFAULT_SEED = 7_2024
PER_STUDY = 50
#: kinds whose instances are valid DICOM: each must be accepted (and, if synthetic, staged)
CLEAN_KINDS = ("clean", "deflated", "clean_large")
# mutation kind -> weight (a slot is clean with probability CLEAN)
CLEAN = 0.35
KINDS = {
    "bit_flip": 14,
    "truncate": 10,
    "wrong_length": 10,
    "huge_length": 6,
    "vr_swap": 8,
    "nested_unclosed": 5,
    "nested_before_study": 3,
    "item_unclosed": 5,
    "empty": 2,
    "tiny": 2,
    "deflated": 4,
    "clean_large": 2,
    "deflate_mutated": 5,
    "deflate_corrupt": 4,
    "ts_mismatch": 8,
    "charset": 6,
    "garbage_meta": 5,
    "pixels_swallow": 4,
    "command_uid": 3,
    "sop_class_mismatch": 1,
    "duplicate": 3,
    "new_version": 3,
}


@dataclass(frozen=True)
class Case:
    """One C-STORE: the context (``sop_class``, ``syntax``), the command's UIDs and the exact
    dataset bytes to put on the wire."""

    index: int
    study: int
    kind: str
    origin: str
    sop_class: str
    sop_instance: bytes = field(repr=False)  # identifiable: never in a failure message
    syntax: str = ""
    data: bytes = field(default=b"", repr=False)
    command_sop_class: str = ""

    def receiver_identity(self) -> tuple[str, str, str, str]:
        """What the receiver compares to call two C-STOREs the same instance: the command's
        SOP Instance UID (as it decodes it) and the bytes it stores."""
        uid = self.sop_instance.rstrip(b"\x00 ").decode("ascii", "replace")
        return uid, self.sop_class, self.syntax, hashlib.sha256(self.data).hexdigest()


@dataclass
class Corpus:
    """The C-STOREs of one run, in sending order, and what was planted in them."""

    seed: int
    cases: list[Case] = field(default_factory=list, repr=False)
    #: planted value -> its category: what must never leave the box (names, NHS numbers...)
    identifiers: dict[str, str] = field(default_factory=dict, repr=False)
    #: original UIDs (study, series, instance) of the bases
    uids: set[str] = field(default_factory=set, repr=False)


def build_corpus(seed: int = DEFAULT_SEED, n: int = 2000) -> Corpus:
    """``n`` C-STOREs in ``n // PER_STUDY`` studies (at least one), all from ``seed``."""
    corpus = Corpus(seed)
    studies = max(1, round(n / PER_STUDY))
    sizes = [n // studies + (1 if s < n % studies else 0) for s in range(studies)]
    rng = random.Random(seed)
    kinds, weights = list(KINDS), list(KINDS.values())
    next_bomb = BOMB_EVERY // 2
    for study, size in enumerate(sizes):
        made = study_bases(seed, study, size)
        corpus.identifiers.update(made.identifiers)
        corpus.uids.update(made.uids)
        done: list[Case] = []
        for base in made.bases:
            index = len(corpus.cases)
            if index >= next_bomb and base.origin == "synthetic":
                kind, next_bomb = "deflate_bomb", next_bomb + BOMB_EVERY
            elif rng.random() < CLEAN:
                kind = "clean"
            else:
                kind = rng.choices(kinds, weights)[0]
            case = Mutator(rng, base, index, done).make(kind)
            done.append(case)
            corpus.cases.append(case)
    return corpus


class Mutator(EncodingKinds):
    """Makes one ``Case`` of a given kind from a base instance."""

    def __init__(self, rng: random.Random, base: Base, index: int, done: list[Case]) -> None:
        self.rng, self.base, self.index, self.done = rng, base, index, done
        self.enc = Encoding.of(base.syntax)

    @cached_property
    def els(self) -> list[Element]:
        return db.walk(self.base.data, self.enc)

    def make(self, kind: str) -> Case:
        made = getattr(self, kind)()
        if isinstance(made, Case):
            return made
        syntax, data = made if isinstance(made, tuple) else (self.base.syntax, made)
        if syntax == self.base.syntax and self.enc.deflated:
            data = db.deflate(data)
        return self.case(kind, data, syntax)

    def case(self, kind: str, data: bytes, syntax: str | None = None, **kw: object) -> Case:
        b = self.base
        fields = {"sop_instance": b.sop_instance.encode(), "sop_class": b.sop_class, **kw}
        return Case(
            self.index, b.study, kind, b.origin, syntax=syntax or b.syntax, data=data, **fields
        )  # type: ignore[arg-type]

    def _pick(self, pred=lambda e: True) -> Element | None:
        choices = [e for e in self.els if pred(e)]
        return self.rng.choice(choices) if choices else None

    def _pixel_start(self) -> int:
        pixel = [e for e in self.els if e.tag == db.PIXEL_DATA and e.depth == 0]
        return pixel[0].start if pixel else len(self.base.data)

    # --- kinds ------------------------------------------------------------------------------
    def clean(self) -> tuple[str, bytes] | bytes:
        b = self.base
        if b.origin != "synthetic" or self.rng.random() < 0.7:
            return b.data
        syntax = self.rng.choice([ImplicitVRLittleEndian, ExplicitVRBigEndian])
        return syntax, reencode(b, Encoding.of(syntax))

    def bit_flip(self, data: bytes | None = None) -> bytes:
        out = bytearray(self.base.data if data is None else data)
        end = min(self._pixel_start(), len(out)) if self.rng.random() < 0.85 else len(out)
        for _ in range(self.rng.choice([1, 1, 2, 3, 5, 8, 16, 64])):
            pos = self.rng.randrange(max(1, end))
            out[pos] ^= 1 << self.rng.randrange(8)
        return bytes(out)

    def truncate(self) -> bytes:
        data, r = self.base.data, self.rng.random()
        el = self._pick(lambda e: e.length not in (0, UNDEFINED))
        if r < 0.4 and el is not None:
            cut = el.start + self.rng.randrange(1, el.value - el.start + 1)
        elif r < 0.8 and el is not None:
            cut = el.value + self.rng.randrange(min(el.length, len(data) - el.value))
        else:
            cut = self.rng.randrange(1, len(data))
        return data[: min(cut, len(data) - 1)]

    def wrong_length(self) -> bytes:
        el = self._pick(lambda e: e.length != UNDEFINED)
        assert el is not None
        n, rest = el.length, len(self.base.data) - el.value
        new = self.rng.choice(
            [n + 1, max(n - 1, 0), n + 2, max(n - 2, 0), 0, 2 * n + 1, n + 1000, rest + 2, 0xFFFF]
        )
        return db.put_length(self.base.data, el, new, self.enc)

    def huge_length(self) -> bytes:
        el = self._pick(lambda e: e.tag == db.PIXEL_DATA) if self.rng.random() < 0.3 else None
        el = el or self._pick(lambda e: e.length != UNDEFINED)
        assert el is not None
        if el.length_size == 2:
            return db.put_length(self.base.data, el, self.rng.choice([0xFFFF, 0xFFFE]), self.enc)
        new = self.rng.choice(
            [0xFFFFFFFE, 0x7FFFFFFF, 0x80000000, 0xFFFFFFF0, UNDEFINED, len(self.base.data) * 1024]
        )
        return db.put_length(self.base.data, el, new, self.enc)

    def vr_swap(self) -> bytes:
        el = self._pick(lambda e: e.vr != b"")
        if el is None:  # implicit VR: there are no VRs to swap
            return self.wrong_length()
        data = self.base.data
        new_vr = self.rng.choice([*db.VRS, b"ZZ", b"\x00\x00", b"  ", b"ox", b"sq"])
        if self.rng.random() < 0.5 or el.length == UNDEFINED or el.length > 0xFFFF:
            return data[: el.start + 4] + new_vr + data[el.start + 6 :]
        # re-encoded under the new VR: a consistent header, so the value itself is misread
        value = data[el.value : el.value + el.length]
        tag = data[el.start : el.start + 4]
        if new_vr in db.LONG_VRS:
            header = tag + new_vr + b"\x00\x00" + el.length.to_bytes(4, self._order())
        else:
            header = tag + new_vr + el.length.to_bytes(2, self._order())
        return data[: el.start] + header + value + data[el.value + el.length :]

    def _order(self) -> str:
        return "little" if self.enc.little else "big"

    def _nest(self, tag: int, depth: int) -> bytes:
        return (db.undefined_header(tag, self.enc) + db.undefined_header(db.ITEM, self.enc)) * depth

    def _planted_text(self) -> bytes:
        el = self._pick(lambda e: e.tag == 0x00100010 and e.depth == 0)
        name = self.base.data[el.value : el.value + el.length] if el else b"Anon^Ymous"
        return db.encode_element(0x00100010, b"PN", name.rstrip(), self.enc)

    def nested_unclosed(self) -> bytes:
        data = self.base.data
        nest = self._nest(0x00400275, self.rng.choice([1000, 2500, 5000, 10000]))
        nest += self._planted_text()
        where = self.rng.choice(["end", "before_pixels", "in_order"])
        pos = {"end": len(data), "before_pixels": self._pixel_start()}.get(where)
        if pos is None:
            pos = db.insert_at(data, self.enc, 0x00400275)
        return data[:pos] + nest + data[pos:]

    def nested_before_study(self) -> bytes:
        data = self.base.data
        pos = db.insert_at(data, self.enc, 0x00081110)
        return data[:pos] + self._nest(0x00081110, self.rng.choice([1000, 3000, 6000])) + data[pos:]

    def item_unclosed(self) -> bytes:
        data = self.base.data
        acc = self._pick(lambda e: e.tag == 0x00080050 and e.depth == 0)
        value = data[acc.value : acc.value + acc.length] if acc else b"ACC0"
        body = db.undefined_header(0x00400275, self.enc) + db.undefined_header(db.ITEM, self.enc)
        body += db.encode_element(0x00400009, b"SH", value, self.enc)
        body += db.encode_element(0x00401001, b"SH", value, self.enc) + self._planted_text()
        pos = len(data) if self.rng.random() < 0.5 else db.insert_at(data, self.enc, 0x00400275)
        return data[:pos] + body + data[pos:]

    def empty(self) -> Case:
        return self.case("empty", b"", _native(self.base))

    def tiny(self) -> Case:
        data = self.rng.choice(
            [
                b"\x08\x00",
                b"\x08\x00\x05\x00",
                b"\xfe\xff\x00\xe0\xff\xff\xff\xff",
                b"\x00",
                bytes(self.rng.randrange(256) for _ in range(7)),
            ]
        )
        return self.case("tiny", data, _native(self.base))

    def pixels_swallow(self) -> bytes:
        """Native pixel data begun in front of the request attributes, swallowing them: the
        identifiers they hold are read as pixel bytes (exactly as long as before, or longer)."""
        data, enc = self.base.data, self.enc
        pixel = self._pick(lambda e: e.tag == db.PIXEL_DATA and e.depth == 0)
        if pixel is None or pixel.length == UNDEFINED:
            return self.bit_flip()
        request = self._pick(lambda e: e.tag == 0x00400275 and e.depth == 0)
        if request is not None:
            block, rest = data[request.start : request.end], data[: request.start]
            rest += data[request.end : pixel.start]
        else:
            block, rest = self._planted_text(), data[: pixel.start]
            acc = self._pick(lambda e: e.tag == 0x00080050 and e.depth == 0)
            if acc is not None:
                value = data[acc.value : acc.value + acc.length]
                block += db.encode_element(0x00401001, b"SH", value, enc)
        pixels = data[pixel.value : pixel.end]
        if self.rng.random() < 0.5:
            pixels = pixels[: max(0, len(pixels) - len(block))]
        header = data[pixel.start : pixel.value]
        at = pixel.length_at - pixel.start
        header = (
            header[:at] + (len(block) + len(pixels)).to_bytes(4, self._order()) + header[at + 4 :]
        )
        return rest + header + block + pixels + data[pixel.end :]

    def duplicate(self) -> Case:
        earlier = [c for c in self.done if c.kind != "deflate_bomb"]
        if not earlier:
            return self.make("clean")
        return replace(self.rng.choice(earlier), index=self.index, kind="duplicate")

    def new_version(self) -> Case:
        earlier = [
            c
            for c in self.done
            if c.data
            and not Encoding.of(c.syntax).deflated
            and c.kind not in ("command_uid", "deflate_bomb")
        ]
        if not earlier:
            return self.make("clean")
        c = self.rng.choice(earlier)
        data = c.data[:-1] + bytes([c.data[-1] ^ 0x01])  # one pixel bit: a new version
        return replace(c, index=self.index, kind="new_version", data=data)


def _native(base: Base) -> str:
    return ExplicitVRLittleEndian if base.syntax not in UNCOMPRESSED else base.syntax
