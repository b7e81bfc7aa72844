"""Names the source never named: a third person's name in retained free text is found by the
name vocabulary, and cleaned or held back per profile; radiology text is left alone."""

from __future__ import annotations

import io

import pydicom
import pytest
from conftest import KEY, ct_dataset, to_bytes
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from consumers.deid import Deidentifier, DeidPolicy
from consumers.deid.names import STOP, build_dict, find_name, stop_words, vocabulary

#: none of these names is in the instance (its patient is Featherstonehaugh^Araminta)
THIRD_PARTY = [
    "Referred by Dr Okonkwo for chest pain",
    "GP: NWACHUKWU",
    "requested by Dr White",
    "ref Dr. A. K. Patel, ?PE",
    "c/o Mrs O'Driscoll",
    "Siobhan Kowalczyk",
    "Sister Fairweather",
    "REF DR BROWN",
    "seen by Gonçalves",
    "Grace Hill",
    "Prof. Lindqvist",
    "reported by MACKINNON",
]
#: what descriptions, protocols and kernels look like: none is a name
RADIOLOGY = [
    "CT CHEST WITH CONTRAST",
    "CT HEAD WITHOUT CONTRAST",
    "MR BRAIN",
    "DR CHEST PA",
    "B30f",
    "STANDARD",
    "BONE",
    "LUNG",
    "Thorax 1.0 B70f",
    "CTA Circle of Willis",
    "t1_mprage_sag_p2_iso",
    "AX T2 FLAIR",
    "Omnipaque 350 100ml",
    "Routine Head",
    "SOMATOM Definition Flash",
    "Topogram 0.6 T20s",
    "XR KNEE LEFT AP LAT",
    "CT KUB",
    "Dixon water",
]


def with_code_meaning(text: str) -> Dataset:
    ds = ct_dataset()
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator = "X1", "99LOCAL"
    code.CodeMeaning = text  # retained as it is (TEXT_ALLOW): only the gate stands guard
    ds.AnatomicRegionSequence = Sequence([code])
    return ds


@pytest.mark.parametrize("text", THIRD_PARTY)
def test_third_party_names_are_found(text: str) -> None:
    assert find_name(text), text


@pytest.mark.parametrize("text", RADIOLOGY)
def test_radiology_text_is_not_a_name(text: str) -> None:
    assert find_name(text) is None, text


@pytest.mark.parametrize("word", ["chest", "bone", "head", "standard", "lung", "dixon"])
def test_stop_list_holds_radiology_words_that_are_names(word: str) -> None:
    assert word in stop_words() and word in vocabulary()


@pytest.mark.parametrize("text", THIRD_PARTY[:6])
def test_default_profile_cleans_the_value_and_releases(deid: Deidentifier, text: str) -> None:
    result = deid.process(to_bytes(with_code_meaning(text)))
    assert result.ok, result.reason
    out = pydicom.dcmread(io.BytesIO(result.data))
    assert out.AnatomicRegionSequence[0].CodeMeaning == "REMOVED"  # Type 1: stays present
    assert text.encode() not in result.data


@pytest.mark.parametrize("text", THIRD_PARTY[:6])
def test_hold_profile_holds_the_instance_back(text: str) -> None:
    deid = Deidentifier(KEY, DeidPolicy(trust_code="RTK", unknown_names="hold"))
    result = deid.process(to_bytes(with_code_meaning(text)))
    assert (result.ok, result.reason) == (False, "verification_failed:name_vocabulary")


def test_off_profile_keeps_the_text() -> None:
    deid = Deidentifier(KEY, DeidPolicy(trust_code="RTK", unknown_names="off"))
    result = deid.process(to_bytes(with_code_meaning("Referred by Dr Okonkwo")))
    assert result.ok and b"Okonkwo" in result.data


@pytest.mark.parametrize("text", RADIOLOGY)
def test_radiology_text_is_kept_as_it_is(text: str) -> None:
    deid = Deidentifier(KEY, DeidPolicy(trust_code="RTK", unknown_names="hold"))
    result = deid.process(to_bytes(with_code_meaning(text)))
    assert result.ok, result.reason
    assert pydicom.dcmread(io.BytesIO(result.data)).AnatomicRegionSequence[0].CodeMeaning == text


def test_clean_descriptors_empties_a_description_naming_a_third_person() -> None:
    options = frozenset({"retain_longitudinal_modified_dates", "clean_descriptors"})
    deid = Deidentifier(KEY, DeidPolicy(trust_code="RTK", options=options))
    ds = ct_dataset()
    ds.StudyDescription = "CT CHEST WITH CONTRAST"
    ds.SeriesDescription = "per Dr Okonkwo"
    out = pydicom.dcmread(io.BytesIO(deid.process(to_bytes(ds)).data))
    assert out.StudyDescription == "CT CHEST WITH CONTRAST"
    assert out.SeriesDescription == ""


def test_vocabulary_is_the_shipped_file() -> None:
    """The data ships with the package, with the sha256 its README records."""
    import hashlib
    from importlib import resources

    data = resources.files("consumers.deid").joinpath("data")
    digest = hashlib.sha256(data.joinpath("person_names.tsv.gz").read_bytes()).hexdigest()
    assert digest in data.joinpath("README.md").read_text("utf-8")
    names = build_dict()
    assert len(names) > 180_000 and {"okonkwo", "patel", "smith", "nwachukwu"} <= set(names)


def test_the_shipped_index_is_current_and_answers_as_the_sources_do() -> None:
    """``person_names.idx`` is what ``--index`` makes of the shipped sources today (rebuild it
    after editing the stop-list), it is what ``vocabulary()`` loads, and it gives every name
    the flags of the dict built from the sources; words that are no name are not found."""
    from importlib import resources

    from consumers.deid.names import INDEX, Vocabulary, index_bytes

    names = build_dict()
    shipped = resources.files("consumers.deid").joinpath("data", INDEX).read_bytes()
    assert shipped == index_bytes(names)
    index = vocabulary()
    assert isinstance(index, Vocabulary) and len(index) == len(names)
    assert all(index.get(name, -1) == flags for name, flags in names.items())
    assert STOP & index.get("chest") and "chest" in index
    nonsense = ["", "zzqxv", "okonkwoo", "smith smith", "ok0nkwo", "Okonkwo", "ωμέγα"]
    assert [index.get(word, -1) for word in nonsense] == [-1] * len(nonsense)
    assert not any(word in index for word in nonsense) and 42 not in index


def test_a_stale_or_damaged_index_is_not_used(tmp_path, monkeypatch) -> None:
    """An index made from other sources (a stop-list edited without ``--index``), cut short
    or missing: the vocabulary is built from the sources instead, with the same answers."""
    from importlib import resources

    from consumers.deid import names as module

    real = resources.files("consumers.deid").joinpath("data")
    shipped = real.joinpath(module.INDEX).read_bytes()
    for name in module._SOURCES:
        (tmp_path / name).write_bytes(real.joinpath(name).read_bytes())
    monkeypatch.setattr(module, "_data", lambda: tmp_path)
    (tmp_path / module.INDEX).write_bytes(shipped)
    assert isinstance(module._load_index(), module.Vocabulary)  # a faithful copy is used
    for damaged in (shipped[:-1], b"SBNAMES0" + shipped[8:], b""):
        (tmp_path / module.INDEX).write_bytes(damaged)
        assert module._load_index() is None
    (tmp_path / module.INDEX).unlink()
    assert module._load_index() is None
    (tmp_path / module.INDEX).write_bytes(shipped)
    stoplist = tmp_path / "name_stoplist.txt"
    stoplist.write_text(stoplist.read_text("utf-8") + "\nokonkwo\n", "utf-8")
    assert module._load_index() is None  # made before the edit: not used
    module.stop_words.cache_clear()
    try:
        assert module.build_dict()["okonkwo"] & STOP  # what the fallback answers
    finally:
        module.stop_words.cache_clear()
