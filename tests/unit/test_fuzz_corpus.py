"""The fuzz harness itself (``helpers.fuzz``, ``helpers.dicom_bytes``, ``helpers.raw_scu``):
the corpus is a function of its seed, the byte walker agrees with pydicom on the bases, and the
mutations are what they say they are."""

from __future__ import annotations

import warnings

from helpers import dicom_bytes as db
from helpers.fuzz import CLEAN_KINDS, KINDS, build_corpus
from helpers.fuzz_bases import study_bases
from helpers.raw_scu import store_command
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset


def _read(syntax: str, data: bytes, *, inflated: bool = False):
    enc = db.Encoding.of(syntax)
    if enc.deflated and not inflated:
        data = db.inflate(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_dataset(DicomBytesIO(data), enc.implicit, enc.little)


def test_the_corpus_is_a_function_of_its_seed() -> None:
    one, again, other = build_corpus(11, 150), build_corpus(11, 150), build_corpus(12, 150)
    assert [c.data for c in one.cases] == [c.data for c in again.cases]
    assert [c.data for c in one.cases] != [c.data for c in other.cases]
    assert len(one.cases) == 150 and len({c.study for c in one.cases}) == 3


def test_the_walker_ends_every_base_where_pydicom_ends_it() -> None:
    made = study_bases(5, 0, 200)
    assert len({b.origin for b in made.bases}) > 20  # every bundled file and the synthetic CT
    studies = set()
    for base in made.bases:
        els = db.walk(base.data, db.Encoding.of(base.syntax))
        top = [e for e in els if e.depth == 0]
        assert top[-1].end == len(base.data), base.origin
        ds = _read(base.syntax, base.data, inflated=True)  # bases are kept inflated
        assert [e.tag for e in top] == [int(t) for t in ds.keys()], base.origin
        studies.add(str(ds.StudyInstanceUID))
    assert len(studies) == 1 and studies <= made.uids  # planted in the bundled files too


def test_mutations_break_what_they_say_and_clean_instances_stay_valid() -> None:
    corpus = build_corpus(3, 2000)
    kinds = {c.kind for c in corpus.cases}
    assert set(KINDS) | {"clean", "deflate_bomb"} <= kinds
    for case in corpus.cases:
        if case.kind in CLEAN_KINDS:
            ds = _read(case.syntax, case.data)
            assert "StudyInstanceUID" in ds and "SOPInstanceUID" in ds, case.kind
        elif case.kind == "empty":
            assert case.data == b""
        elif case.kind == "nested_unclosed":
            assert case.data.count(b"\xfe\xff\x00\xe0\xff\xff\xff\xff") >= 1000
    planted = {v for v, kind in corpus.identifiers.items() if kind == "nhs"}
    assert len(planted) == 40 and all(v.startswith("999") for v in planted)


def test_the_raw_command_set_is_what_dicom_expects() -> None:
    command = store_command(7, "1.2.840.10008.5.1.4.1.1.2", b"1.2.3")
    ds = read_dataset(DicomBytesIO(command), True, True)
    assert ds.CommandGroupLength == len(command) - 12
    assert (ds.CommandField, ds.MessageID, ds.CommandDataSetType) == (1, 7, 0)
    assert ds.AffectedSOPInstanceUID == "1.2.3" and len(command) % 2 == 0
