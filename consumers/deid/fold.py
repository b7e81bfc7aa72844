"""Unicode folding for every identifier comparison: one spelling for "Müller", "MULLER",
"Muller" and "ＭＵＬＬＥＲ".

``fold`` is applied to *both* sides of every comparison (the identifiers collected from the
source and the text searched in the output): NFKD (compatibility decomposition: full-width
letters and digits, ligatures and superscripts become their plain forms, accents become
combining marks), combining marks dropped, then full case folding. Letters that carry their
stroke or ligature in the code point itself (ø, ł, đ, æ, œ, þ, ı) do not decompose, so they
are mapped explicitly to what people type on an English keyboard.

``transliterations`` gives the other ASCII spelling German and Scandinavian names are
commonly written in (Müller -> Mueller, Åse -> Aase): a typist without the letter writes one
of the two, and both must be found.
"""

from __future__ import annotations

import unicodedata

#: letters NFKD leaves alone, and what a typist without them writes
_STROKES = str.maketrans(
    {
        "ø": "o",
        "Ø": "o",
        "ł": "l",
        "Ł": "l",
        "đ": "d",
        "Đ": "d",
        "ð": "d",
        "Ð": "d",
        "ħ": "h",
        "Ħ": "h",
        "ı": "i",
        "æ": "ae",
        "Æ": "ae",
        "œ": "oe",
        "Œ": "oe",
        "þ": "th",
        "Þ": "th",
        "ŧ": "t",
        "Ŧ": "t",
        "ŀ": "l",
        "Ŀ": "l",
        "’": "'",
        "‘": "'",
        "ʼ": "'",
        "‐": "-",
        "‑": "-",
        "–": "-",
        "—": "-",
    }
)
#: the German / Scandinavian ASCII spellings (applied before folding)
_TRANSLIT = str.maketrans(
    {
        "ä": "ae",
        "Ä": "ae",
        "ö": "oe",
        "Ö": "oe",
        "ü": "ue",
        "Ü": "ue",
        "ø": "oe",
        "Ø": "oe",
        "å": "aa",
        "Å": "aa",
        "ß": "ss",
    }
)


def fold(text: str) -> str:
    """`text` without accents and case: NFKD, combining marks removed, casefolded (ASCII
    text only lower-cased: the common case, and the same result)."""
    if text.isascii():
        return text.lower()
    decomposed = unicodedata.normalize("NFKD", text.translate(_STROKES).casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c)).translate(_STROKES)


def transliterations(text: str) -> set[str]:
    """Other folded spellings of `text` a typist may use (``Müller`` -> ``mueller``); empty
    when there is none."""
    if text.isascii():
        return set()
    other = fold(text.translate(_TRANSLIT))
    return {other} - {fold(text)}
