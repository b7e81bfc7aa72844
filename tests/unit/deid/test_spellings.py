"""Identifiers in other spellings: no accents, joined surname parts, any NHS-number grouping,
birth dates in words. Each planted into retained text of an otherwise clean instance."""

from __future__ import annotations

import io

import pydicom
import pytest
from conftest import ct_dataset, to_bytes
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from consumers.deid import Deidentifier, DeidPolicy
from consumers.deid.fold import fold
from consumers.deid.patterns import has_nhs_number
from consumers.deid.verify import Identifiers

OWN_NHS = "4010232137"  # valid modulus 11
OTHER_NHS = "6209571344"  # valid modulus 11, nobody's in the instance


def held_for(deid: Deidentifier, text: str, **patient: str) -> str | None:
    """The reason an instance is held back with `text` in a retained code meaning."""
    ds = ct_dataset()
    ds.PatientName = patient.get("name", "Quartermaine^Evadne")
    ds.PatientID = patient.get("nhs", OWN_NHS)
    ds.PatientBirthDate = patient.get("dob", "19570302")
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator = "X1", "99LOCAL"
    code.CodeMeaning = text  # retained as it is (TEXT_ALLOW): only the gate stands guard
    ds.AnatomicRegionSequence = Sequence([code])
    result = deid.process(to_bytes(ds))
    return None if result.ok else str(result.reason)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("MÜLLER-LLŶR^SIÂN", "Muller"),
        ("MÜLLER-LLŶR^SIÂN", "review by sian"),
        ("MÜLLER-LLŶR^SIÂN", "MUELLER"),  # German transliteration
        ("MÜLLER-LLŶR^SIÂN", "mullerllyr"),
        ("JOSÉ^GONÇALVES", "Jose Goncalves"),
        ("ŁUKASZEWSKA^ØYVIND", "Lukaszewska"),
        ("ŁUKASZEWSKA^ØYVIND", "oyvind"),
        ("Quartermaine^Evadne", "ＱＵＡＲＴＥＲＭＡＩＮＥ"),  # full-width
        ("Quartermaine^Evadne", "Évadne"),  # accents added to a plain name
        ("O'SULLIVAN-PRICE^TAMSIN", "OSullivan"),
        ("O'SULLIVAN-PRICE^TAMSIN", "OSullivanPrice"),
        ("O'SULLIVAN-PRICE^TAMSIN", "sullivanprice"),
        ("O'SULLIVAN-PRICE^TAMSIN", "O Sullivan"),
        ("O’SULLIVAN-PRICE^TAMSIN", "o-sullivan price"),
        ("D'ARCY-ST JOHN^PIP", "Darcystjohn"),
        ("MACALLISTER^RUAIRI", "McAllister"),
        ("VAN DER BERG^ANNEKE", "Vanderberg"),
        ("Mary-Jane^Okonkwo-Eze", "MARYJANE"),
    ],
)
def test_names_in_other_spellings_are_found(deid: Deidentifier, name: str, text: str) -> None:
    assert held_for(deid, f"scan {text} note", name=name) == "verification_failed:person_name"


@pytest.mark.parametrize(
    "text",
    [
        "401 023 2137",
        "401-023-2137",
        "401.023.2137",
        "401/023/2137",
        "4010-232-137",
        "401 0232 137",
        "40 10 23 21 37",
        "NHS:4010232137.",
        "401 - 023 - 2137",
    ],
)
def test_own_nhs_number_in_any_grouping(deid: Deidentifier, text: str) -> None:
    assert held_for(deid, f"ref {text}") in (
        "verification_failed:nhs_number",
        "verification_failed:nhs_number_pattern",
    )


@pytest.mark.parametrize(
    "text",
    [
        "620 957 1344",
        "620.957.1344",
        "620/957/1344",
        "620-9571-344",
        "6209571344",
        "no 620 957 1344 2024",
        "６２０９５７１３４４",
    ],
)
def test_anybodys_nhs_number_in_any_grouping(deid: Deidentifier, text: str) -> None:
    assert held_for(deid, f"ref {text} today") == "verification_failed:nhs_number_pattern"


@pytest.mark.parametrize(
    "text",
    [
        "CT CHEST 1.25 0.984 120 200",
        "kV 120 mA 250 0.5 s 1.25 mm 512 512",
        "series 3 of 12, 620 957 1345",
        "20240315 101500",
        "1.2.826.0.1.3680043.2.1",
    ],
)
def test_numbers_that_are_not_nhs_numbers(text: str) -> None:
    assert not has_nhs_number(fold(text))


@pytest.mark.parametrize(
    "text",
    [
        "2 March 1957",
        "March 2, 1957",
        "02/03/57",
        "2nd Mar 1957",
        "1957-03-02",
        "02.03.1957",
        "2/3/1957",
        "03/02/1957",
        "2nd of March, 1957",
        "02MAR1957",
        "2-mar-57",
        "Mar. 2nd 1957",
        "1957 March 2",
        "19570302",
        "02031957",
        "born 2 MARCH 1957!",
        "2 march  1957",
    ],
)
def test_birth_date_in_any_spelling(deid: Deidentifier, text: str) -> None:
    assert held_for(deid, f"dob {text}") == "verification_failed:birth_date"


@pytest.mark.parametrize(
    "text",
    [
        "12 March 1957",
        "2 March 1958",
        "22/03/57",
        "March 20, 1957",
        "1957",
        "2 May 1957",
        "1957-03-021",
    ],
)
def test_other_dates_are_not_the_birth_date(deid: Deidentifier, text: str) -> None:
    assert held_for(deid, f"seen {text}") is None


def test_clean_action_empties_text_with_an_unaccented_name(key) -> None:
    deid = Deidentifier(
        key,
        DeidPolicy(
            trust_code="RTK",
            options=frozenset({"retain_longitudinal_modified_dates", "clean_descriptors"}),
        ),
    )
    ds = ct_dataset()
    ds.PatientName = "NÚÑEZ-O'NEILL^ÍÑIGO"
    ds.StudyDescription = "CT HEAD"
    ds.SeriesDescription = "Inigo Nunez"
    ds.ProtocolName = "ONeill protocol"
    out = pydicom.dcmread(io.BytesIO(deid.process(to_bytes(ds)).data))
    assert out.StudyDescription == "CT HEAD"
    assert out.SeriesDescription == "" and out.ProtocolName == ""


def test_folded_name_found_in_raw_bytes() -> None:
    ids = Identifiers()
    ids.add_name("GRÜNEWALD^BJØRN")
    for raw in (
        b"\x01GRUNEWALD\x00",
        b"..bjorn..",
        "Grünewald".encode("latin-1"),
        "BJØRN".encode(),
    ):
        assert ids.search_bytes(raw) == "person_name", raw
    assert ids.search_bytes(b"GREENWALD BJORG") is None


def test_folding_is_applied_to_the_identifiers_too() -> None:
    """A source name typed without accents still matches accented output text."""
    ids = Identifiers()
    ids.add_name("Bronte^Zoe")
    assert ids.search_text("Brontë") == "person_name"
    assert ids.search_text("ZOË") == "person_name"
