"""Every row of Table E.1-1 maps to an implemented action, and the walk does what it says."""

from __future__ import annotations

import hashlib
from importlib import resources

import pytest
from conftest import KEY
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from consumers.deid.allowlist import SUPPLEMENTARY_ROWS
from consumers.deid.config import DEFAULT_OPTIONS, OPTION_COLUMNS
from consumers.deid.engine import DUMMY, InstanceContext, TableWalker
from consumers.deid.pseudonyms import Pseudonymiser
from consumers.deid.table import (
    ACTIONS,
    BASIC_CODES,
    PATTERNS,
    annex_e_rows,
    compile_table,
    parse_tag,
    safe_private_keys,
)

OPTION_SETS = [DEFAULT_OPTIONS, frozenset(), frozenset(OPTION_COLUMNS)] + [
    frozenset({o}) for o in OPTION_COLUMNS
]
SAMPLE = {
    "PN": "Featherstonehaugh^Araminta",
    "LO": "Quorn",
    "SH": "Quorn",
    "ST": "Quorn",
    "LT": "Quorn",
    "UT": "Quorn",
    "UC": "Quorn",
    "UR": "http://x.invalid/q",
    "CS": "QUORN",
    "AE": "QUORNAE",
    "DA": "20240315",
    "DT": "20240315101500",
    "TM": "101500",
    "AS": "042Y",
    "IS": "42",
    "DS": "4.2",
    "US": 42,
    "SS": 42,
    "UL": 42,
    "SL": 42,
    "UV": 42,
    "SV": 42,
    "FL": 4.5,
    "FD": 4.5,
    "OB": b"QUORN!",
    "OW": b"QUORN!",
    "UN": b"QUORN!",
    "OF": b"\x00\x00\x80\x3f",
    "OD": b"\x00" * 8,
    "OL": b"\x00" * 4,
    "OV": b"\x00" * 8,
    "AT": 0x00100010,
    "UI": "1.2.826.0.1.99.7",
}


def test_data_files_are_the_pinned_edition() -> None:
    data = resources.files("consumers.deid").joinpath("data")
    readme = data.joinpath("README.md").read_text("utf-8")
    for name in ("annex_e_table.json", "safe_private.json"):
        digest = hashlib.sha256(data.joinpath(name).read_bytes()).hexdigest()
        assert f"{digest}  {name}" in readme, f"{name} changed without re-pinning"
    assert len(annex_e_rows()) == 656
    assert len(safe_private_keys()) == 479


def test_every_row_has_a_known_code() -> None:
    for row in annex_e_rows():
        assert row["basic"] in BASIC_CODES, row["tag"]
        for option in OPTION_COLUMNS:
            assert row[option] in (None, "K", "C"), (row["tag"], option)


@pytest.mark.parametrize("options", OPTION_SETS, ids=lambda o: "+".join(sorted(o)) or "basic")
def test_every_row_compiles_to_an_implemented_action(options: frozenset[str]) -> None:
    table = compile_table(options)
    rows = annex_e_rows()
    plain = [r for r in rows if r["tag"] not in PATTERNS]
    assert len(plain) == 652 and len(rows) - len(plain) == 4
    for row in plain:
        assert table.actions[parse_tag(row["tag"])] in ACTIONS, row["tag"]
    for pattern_action in (table.curve, table.overlay_data, table.overlay_comments, table.private):
        assert pattern_action in ACTIONS
    extra = {parse_tag(r["tag"]) for r in SUPPLEMENTARY_ROWS}
    assert set(table.actions) == {parse_tag(r["tag"]) for r in plain} | extra


def _context() -> InstanceContext:
    pseudo = Pseudonymiser(KEY, "RTK", 365)
    return InstanceContext(
        patient_pseudonym="PSEUDO",
        date_shift_days=10,
        date_mode="shift",
        retain_uids=False,
        uid=pseudo.uid,
        text_is_identifying=lambda t: "featherstonehaugh" in t.lower(),
    )


def _vr(tag: int) -> str | None:
    try:
        return dictionary_VR(tag).split(" or ")[0]
    except KeyError:
        return None


@pytest.mark.parametrize("options", OPTION_SETS, ids=lambda o: "+".join(sorted(o)) or "basic")
def test_walk_applies_each_row(options: frozenset[str]) -> None:
    """One element per table row at depth 2; the outcome must match the compiled action."""
    table = compile_table(options)
    item = Dataset()
    expected: dict[int, str] = {}
    for row in annex_e_rows():
        if row["tag"] in PATTERNS:
            continue
        tag = parse_tag(row["tag"])
        vr = _vr(tag)
        if vr is None or (tag >> 16) <= 0x0002:
            continue  # not in pydicom 3.0's dictionary / command and file-meta groups
        value = Sequence([Dataset()]) if vr == "SQ" else SAMPLE[vr]
        item[tag] = DataElement(tag, vr, value)
        expected[tag] = table.actions[tag]
    ds = Dataset()
    ds.SharedFunctionalGroupsSequence = Sequence([item])
    ctx = _context()
    TableWalker(table).walk(ds, ctx)
    out = ds.SharedFunctionalGroupsSequence[0]
    for tag, action in expected.items():
        vr = _vr(tag)
        where = f"{tag:08X} {vr} {action}"
        if tag in (0x00100010, 0x00100020):
            assert out[tag].value == "PSEUDO", where
        elif action == "X":
            assert tag not in out, where
        elif action == "Z":
            assert tag in out and out[tag].is_empty, where
        elif action == "U" or (vr == "UI" and action in "KCD"):
            assert str(out[tag].value).startswith("2.25."), where
        elif action == "D":
            assert tag in out, where
            if vr != "SQ":
                assert out[tag].value == DUMMY.get(vr, out[tag].value), where
        elif action in "KC" and vr in ("DA", "DT"):
            assert out[tag].value.startswith("20240325"), where
        elif action in "KC" and vr == "SQ":
            assert tag in out, where
        elif action == "C" and vr in ("PN", "LO", "SH", "ST", "LT", "UT", "UC", "AE"):
            assert tag in out and out[tag].value == SAMPLE[vr], where
        else:
            assert action in "KC", where
            assert tag in out and out[tag].value == SAMPLE[vr], where


def test_combined_codes_read_strictly() -> None:
    from consumers.deid.table import resolve_code

    assert resolve_code("X/Z", "AcquisitionDate") == "X"
    assert resolve_code("X/Z", "ReviewerName") == "Z"
    assert resolve_code("X/D", "SeriesDate") == "X"
    assert resolve_code("X/Z/D", "InstitutionName") == "X"
    assert resolve_code("X/Z/D", "DeviceSerialNumber") == "D"
    assert resolve_code("X/Z/D", "OperatorsName") == "Z"
    assert resolve_code("Z/D", "ContentDate") == "D"
    assert resolve_code("Z/D", "ContrastBolusAgent") == "Z"
    assert resolve_code("X/Z/U*", "SourceImageSequence") == "K"
    with pytest.raises(ValueError):
        resolve_code("Q", None)


def test_pattern_rows_and_default_deny() -> None:
    ds = Dataset()
    ds.add_new(0x50000005, "US", 1)  # curve
    ds.add_new(0x60000010, "US", 16)  # overlay rows
    ds.add_new(0x60003000, "OW", b"\x00\x01")  # overlay data
    ds.add_new(0x60004000, "LT", "note")  # overlay comments
    ds.add_new(0x00190010, "LO", "ACME")  # private creator
    ds.add_new(0x00191001, "LO", "x")  # private
    ds.add_new(0x00080070, "LO", "ACME")  # Manufacturer: allow-listed text
    ds.add_new(0x00181030, "LO", "proto")  # ProtocolName: table X/D -> X
    ds.add_new(0x00400254, "LO", "free")  # PerformedProcedureStepDescription
    ds.add_new(0x00189004, "CS", "PRODUCT")  # ContentQualification: coded, kept
    ds.add_new(0x00880140, "UI", "1.2.3")  # StorageMediaFileSetUID
    ds.add_new(0x00091001, "UN", b"zz")
    ds.add_new(0x00410010, "LO", "old private")
    TableWalker(compile_table(DEFAULT_OPTIONS)).walk(ds, _context())
    assert sorted(f"{int(t):08X}" for t in ds.keys()) == ["00080070", "00189004", "00880140"]
