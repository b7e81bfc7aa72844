"""The gate looks for the patient in coded, date, numeric and UID values as values, not only
in the raw bytes: a header byte next to a value can be a letter or a digit, and then the
byte scan's word-boundary check lets an identifier through."""

from __future__ import annotations

import io

import pytest
from conftest import KEY, ct_dataset, planted_dataset, to_bytes
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from consumers.deid import Deidentifier, DeidPolicy, codec
from consumers.deid.identifiers import Identifiers
from consumers.deid.verify import scan_dataset, verify_output

FULL_DATES = frozenset({"retain_longitudinal_full_dates", "retain_safe_private"})
SYNTAXES = {
    "explicit": ExplicitVRLittleEndian,
    "implicit": ImplicitVRLittleEndian,
    "big endian": ExplicitVRBigEndian,
}


@pytest.mark.parametrize("encoding", sorted(SYNTAXES))
def test_a_kept_date_that_is_the_birth_date_is_held_back_in_every_encoding(encoding: str) -> None:
    """Under the full-dates option a content item's Date is kept. When it is the patient's
    birth date the instance is held back: in big endian the byte after that value is the 'R'
    of the next element's group (5200,9229), which used to hide it from the byte scan."""
    data = to_bytes(
        planted_dataset(), implicit=encoding == "implicit", little=encoding != "big endian"
    )
    result = Deidentifier(KEY, DeidPolicy(trust_code="RTK", options=FULL_DATES)).process(data)
    assert not result.ok and str(result.reason) == "verification_failed:birth_date"


def _source_ids() -> Identifiers:
    source = ct_dataset()
    ids = Identifiers()
    ids.collect(source, "PatientID", source.file_meta)
    return ids


def _output(elements: list[tuple[int, str, object]], ts: str) -> codec.Encoded:
    """A de-identified-looking output holding `elements`; nothing else of the patient."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = "2.25.1234"
    for tag, vr, value in elements:
        ds.add_new(tag, vr, value)
    return codec.write(ds, ts)


#: an identifier in a structured value, with an alphanumeric header byte beside it
CASES = {
    # implicit VR: a private element's VR is unknown; the next group's low byte is '1'
    "a name in a private element of unknown VR, before group 0x0031": (
        [(0x00290010, "LO", "ACME 1.1"), (0x00291010, "LO", "ARAMINTA"), (0x00310010, "LO", "XY")],
        "implicit",
        "person_name",
    ),
    # LE: the byte after the CS value is the low byte of group 0x0041 ('A')
    "a name in a code, before group 0x0041": (
        [(0x00181030, "CS", "ARAMINTA"), (0x00410010, "LO", "ACME")],
        "little",
        "person_name",
    ),
    # LE: the byte after the IS value is the low byte of group 0x0032 ('2')
    "birth date in a number, before group 0x0032": (
        [(0x00200012, "IS", "19610823"), (0x00321032, "PN", "X")],
        "little",
        "birth_date",
    ),
    # BE: the byte before a 50-character value is its length, 0x32 ('2'), a UID character
    "original UID of 50 characters, big endian": (
        [(0x0040A124, "UI", "1.2.826.0.1.3680043.8.498." + "7" * 24)],
        "big",
        "original_uid",
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_identifiers_in_structured_values_next_to_alphanumeric_header_bytes(name: str) -> None:
    elements, order, kind = CASES[name]
    ids = _source_ids()
    if kind == "original_uid":
        ids.uids[str(elements[0][2])] = "original_uid"
    ts = {"little": ExplicitVRLittleEndian, "big": ExplicitVRBigEndian}.get(order)
    encoded = _output(elements, ts or ImplicitVRLittleEndian)
    assert ids.search_bytes(encoded.scan) is None  # the gap: the byte scan alone misses it
    assert verify_output(encoded, ids) == kind
    # pydicom's reader, the gate's fallback when its own parser gives up, sees it too
    parsed = read_dataset(io.BytesIO(encoded.body), encoded.implicit, encoded.little)
    assert scan_dataset(parsed, ids) == kind


def test_structured_values_do_not_hold_back_what_the_byte_scan_lets_through() -> None:
    """Codes, numbers and UIDs that only share digits with the patient's identifiers, and
    identifiers of fewer than 3 characters (the patient's sex, a name initial), pass."""
    ids = _source_ids()
    encoded = _output(
        [
            (0x00100040, "CS", "F"),  # Patient's Sex, kept
            (0x00181030, "CS", "AX"),
            (0x00200012, "IS", "196108"),  # part of the birth date's digits, not the date
            (0x0040A124, "UI", "2.25.19610823943476591999"),  # digits inside a new UID
            (0x00080020, "DA", "20240315"),
        ],
        ExplicitVRLittleEndian,
    )
    assert verify_output(encoded, ids) is None
