"""Person names the source never named: retained free text against a name vocabulary.

The identifier check finds the *instance's own* names (every PN of the source). A third
person's name - the referring GP's in Reason for the Requested Procedure, a radiographer's in
a protocol name - is in no PN attribute of the instance, so it is looked up in a vocabulary
of person names instead (``data/person_names.tsv.gz``, built by
``scripts/build_name_vocabulary.py``; sources, licences and sha256 in ``data/README.md``):
the 162,253 surnames of the 2010 US Census (every surname held by 100+ people: British,
Irish, South Asian, African, East Asian, European names alike) and 37,076 forenames (US
Social Security baby names given 100+ times, 1880-2017, and Tzioumis' 4,250 first names).

Many names are ordinary words (WHITE, HEAD, BONE, MAY) and many radiology words are names
(CHEST, LUNG, STANDARD, DIXON). So a token of retained text is a name when:

1. it is a vocabulary name of 3+ letters that is not a common English word (the lower-case
   words of Webster's Second International) and not on the stop-list
   (``data/name_stoplist.txt``: anatomy, techniques, kernels, eponyms of views and signs,
   contrast agents, vendors and models, our own receipts) - e.g. ``OKONKWO``, ``FAIRWEATHER``;
2. it follows a title or a referral phrase (``Dr``, ``Mrs``, ``Prof``, ``Sister``, ``GP``,
   ``referred by`` ...; initials skipped) and is any vocabulary name - ``Dr White`` - unless
   the title is one of ``DR``/``MR``/``MS`` in capitals, which are also modalities and a
   disease (``MR BRAIN``, ``DR CHEST``), and the word is on the stop-list;
3. a forename followed by a surname, both written with a capital and the rest lower case
   (``Grace White``; in capitals, ``GRACE WHITE`` stays: capitals are how descriptions are
   written), neither on the stop-list;
4. a name-shaped value (``X^Y``, as in a PN) contains any vocabulary name.

Tokens are folded (``fold``) before lookup, so ``Gonçalves`` and ``GONCALVES`` are one name,
and an apostrophe inside a name is dropped (``O'Brien`` -> ``OBRIEN``, the Census spelling).
False-positive rates on real and synthetic descriptions: ``bench/deid/name_fp.py``,
``docs/deidentification.md``.
"""

from __future__ import annotations

import array
import bisect
import gzip
import hashlib
import re
import sys
from functools import cache, lru_cache
from importlib import resources

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from .fold import fold
from .receipts import is_own_text

FORENAME, SURNAME, WORD, STOP = 1, 2, 4, 8
_TOKEN = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*")
TITLES = frozenset(
    """dr doctor mr mrs ms miss mx prof professor sir dame lord lady rev revd reverend father
    sister nurse matron consultant gp registrar surgeon radiographer sonographer""".split()
)
#: titles that are also modalities or a disease when written in capitals
_AMBIGUOUS = frozenset({"dr", "mr", "ms"})
#: titles only ever written before a person's name
_PERSONAL = frozenset("dr doctor mr mrs ms miss mx prof professor".split())
#: "referred by X", "seen by X": the word before "by"
_BY_WORD = "by"
_BY = frozenset(
    "referred ref referrer requested reported dictated signed seen reviewed verified gp per".split()
)


#: the vocabulary as a hash index (``data/person_names.idx``, derived from the two files
#: above by ``scripts/build_name_vocabulary.py --index``): loads in ~8 ms, most of it hashing
#: the two sources, instead of building 189,000 strings (~0.12 s of every process's
#: start-up); used only while its header's sha256 of both sources matches them, else the
#: dict is built from the sources.
INDEX = "person_names.idx"
_MAGIC = b"SBNAMES1"
_SOURCES = ("person_names.tsv.gz", "name_stoplist.txt")


def _key(name: str) -> int:
    """A folded name's 64-bit key in the index (stable across processes and machines)."""
    digest = hashlib.blake2b(name.encode("utf-8"), digest_size=8, person=b"smartbox-names")
    return int.from_bytes(digest.digest(), "little")


class Vocabulary:
    """Folded name -> flags, looked up in the sorted keys of the hash index. A token that is
    not a name is found with a chance of ~1e-14 (64-bit keys): it would be treated as a
    name, which errs on the safe side."""

    __slots__ = ("_flags", "_keys")

    def __init__(self, keys: array.array, flags: bytes) -> None:
        self._keys, self._flags = keys, flags

    def get(self, name: str, default: int = 0) -> int:
        key = _key(name)
        i = bisect.bisect_left(self._keys, key)
        if i < len(self._keys) and self._keys[i] == key:
            return self._flags[i]
        return default

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name, -1) != -1

    def __len__(self) -> int:
        return len(self._keys)


def _data():  # noqa: ANN202 - an importlib.resources Traversable
    return resources.files(__package__).joinpath("data")


def _sources_digest() -> bytes:
    """sha256 of each source file of the vocabulary, concatenated (the index's header)."""
    return b"".join(hashlib.sha256(_data().joinpath(n).read_bytes()).digest() for n in _SOURCES)


def index_bytes(names: dict[str, int]) -> bytes:
    """The index of `names` (folded name -> flags): magic, the sources' digests, the count,
    the sorted little-endian 64-bit keys, then one flag byte per key."""
    pairs = sorted((_key(name), fl) for name, fl in names.items())
    keys = array.array("Q", (k for k, _ in pairs))
    if len(set(keys)) != len(keys):
        raise ValueError("two names share a 64-bit key: change the key's person string")
    if sys.byteorder == "big":
        keys.byteswap()
    head = _MAGIC + _sources_digest() + len(keys).to_bytes(4, "little")
    return head + keys.tobytes() + bytes(fl for _, fl in pairs)


def _load_index() -> Vocabulary | None:
    """The shipped index, or None when it is missing or was made from other sources."""
    try:
        raw = _data().joinpath(INDEX).read_bytes()
    except OSError:
        return None
    head = len(_MAGIC) + 64 + 4
    if raw[: len(_MAGIC)] != _MAGIC or raw[len(_MAGIC) : head - 4] != _sources_digest():
        return None
    n = int.from_bytes(raw[head - 4 : head], "little")
    if len(raw) != head + 9 * n:
        return None
    keys = array.array("Q")
    keys.frombytes(raw[head : head + 8 * n])
    if sys.byteorder == "big":
        keys.byteswap()
    return Vocabulary(keys, raw[head + 8 * n :])


@cache
def vocabulary() -> Vocabulary | dict[str, int]:
    """Folded name -> flags (``FORENAME | SURNAME | WORD | STOP``), ``.get`` and ``in``;
    loaded once: the hash index when it is current, else the dict built from the sources."""
    return _load_index() or build_dict()


def build_dict() -> dict[str, int]:
    """Folded name -> flags, built from ``person_names.tsv.gz`` and the stop-list."""
    raw = gzip.decompress(_data().joinpath("person_names.tsv.gz").read_bytes()).decode("ascii")
    # C-level splitting and one dict build: ~10x faster than a loop over 189,000 lines
    parts = raw.lower().replace("\t", "\n").split("\n")
    codes = {
        flags: (FORENAME if "f" in flags else 0)
        | (SURNAME if "s" in flags else 0)
        | (WORD if "w" in flags else 0)
        for flags in set(parts[1::2])
    }
    names = dict(zip(parts[0::2], map(codes.__getitem__, parts[1::2]), strict=False))
    for word in stop_words():
        if word in names:
            names[word] |= STOP
    return names


@cache
def stop_words() -> frozenset[str]:
    """The stop-list (``data/name_stoplist.txt``), folded."""
    text = _data().joinpath("name_stoplist.txt").read_text("utf-8")
    words = (line.split("#", 1)[0].split() for line in text.splitlines())
    return frozenset(fold(w) for line in words for w in line)


def _compound(text: str, start: int, end: int) -> bool:
    """Whether the letters at ``text[start:end]`` are part of a code-like word joined by
    ``_`` or digits (``GEMS_IDEN_01``, ``t1_mprage``, ``B30f``): not a word of prose."""
    left = text[start - 1] if start else " "
    right = text[end] if end < len(text) else " "
    return left == "_" or right == "_" or left.isdigit() or right.isdigit()


def _title_case(token: str) -> bool:
    return token[:1].isupper() and token[1:].islower()


@lru_cache(maxsize=4096)  # a series repeats its text: most instances are a cache hit
def find_name(text: str) -> str | None:
    """The rule (``distinctive``, ``title``, ``pair``, ``pn``) by which `text` holds a person
    name of the vocabulary, else None. Never returns the name (it is patient data).

    `text` may be several values joined by a line break: rules 1-3 look at tokens in order
    (a title at the end of one value and a name at the start of the next count, which errs
    on the safe side); rule 4 only within the line that has the ``^``."""
    matches = [m for m in _TOKEN.finditer(text) if not _compound(text, m.start(), m.end())]
    if not matches:
        return None
    names = vocabulary()
    originals = [m.group() for m in matches]
    tokens = [fold(t).replace("'", "").replace("’", "") for t in originals]
    flags = [names.get(t, 0) for t in tokens]
    for i, fl in enumerate(flags):
        if not fl:
            continue
        if not fl & (WORD | STOP) and len(tokens[i]) >= 3:
            return "distinctive"
        if i + 1 < len(tokens) and fl & FORENAME and flags[i + 1] & SURNAME:
            pair = (fl | flags[i + 1]) & STOP == 0
            if pair and _title_case(originals[i]) and _title_case(originals[i + 1]):
                return "pair"
    for i, word in enumerate(tokens[:-1]):
        before = tokens[i - 1] if i else ""
        by = word == _BY_WORD and before in _BY
        if word not in TITLES and not by:
            continue
        j = i + 1
        while j < len(tokens) - 1 and len(tokens[j]) == 1:
            j += 1  # initials: "Dr J. K. Rowling"
        fl = flags[j]
        # DR, MR, MS in capitals are also modalities and a disease (MR BRAIN, DR CHEST),
        # unless a referral word comes first (REF DR BROWN)
        weak = word in _AMBIGUOUS and originals[i].isupper() and before not in _BY
        if weak:
            if fl and not fl & (WORD | STOP):
                return "title"  # a name that is no word ("DR LI", "MR NG")
        elif fl and not (fl & STOP and by):
            return "title"
        elif not fl and word in _PERSONAL and originals[j][:1].isupper() and len(tokens[j]) > 2:
            # "Dr Lindqvist", "MRS LINDQVIST": after a title only ever written before a
            # person's name, a capitalised word the vocabulary does not know is a name too
            return "title"
    if "^" in text:
        for line in text.splitlines():
            if "^" in line:
                found = (names.get(fold(t).replace("'", ""), 0) for t in _TOKEN.findall(line))
                if any(fl and not fl & STOP for fl in found):
                    return "pn"
    return None


#: text VRs whose values ``clean_names`` looks at (as the gate does)
_TEXT_VRS = frozenset({"PN", "LO", "SH", "ST", "LT", "UT", "UC"})
#: the replacement: a dummy keeps Type 1 attributes (Code Meaning, Text Value) present
REPLACEMENT = {"PN": "ANONYMOUS"}


def clean_names(ds: Dataset, own: set[str]) -> int:
    """Replace, at every depth of `ds`, each text value holding a vocabulary name by
    ``REMOVED`` (``ANONYMOUS`` for PN); return how many were replaced. `own`: our own
    values (the pseudonym), never touched."""
    cleaned = 0
    for elem in list(ds.iterall()):
        if elem.VR not in _TEXT_VRS or not elem.value:
            continue
        values = elem.value if isinstance(elem.value, MultiValue) else [elem.value]
        texts = [str(v) for v in values]
        if any(t.strip() not in own and not is_own_text(t) and find_name(t) for t in texts):
            elem.value = REPLACEMENT.get(elem.VR, "REMOVED")
            cleaned += 1
    return cleaned
