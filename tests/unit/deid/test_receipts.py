"""The receipts (PS3.15 attributes saying what was done) are built once per policy and shared
by every output: each output must still say what was done to it, and nothing done to one
output may reach another."""

from __future__ import annotations

import io

import pydicom
from conftest import KEY, ct_dataset, to_bytes
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from test_overlay_bits import COLS, ROWS, glyph, image, pack

from consumers.deid import Deidentifier, DeidPolicy, PseudonymKey
from consumers.deid.receipts import _receipts, add_receipts
from consumers.deid.table import CODE_VERSION, TABLE_EDITION

FRESH_METHOD = [f"SMARTBOX DEID {CODE_VERSION}", f"{TABLE_EDITION} E.1-1", f"KEY {KEY.version}"]


def overlay_instance() -> bytes:
    """16-bit cells with 12 stored bits and a glyph drawn in bit 14: the engine clears it."""
    _plain, drawn = image(12, 11, False, 14, 2)
    ds = ct_dataset(rows=ROWS, cols=COLS)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pack(drawn, 2, True)
    return to_bytes(ds)


def named_instance() -> bytes:
    """A kept code meaning naming a third person: the engine replaces it (``clean_names``)."""
    ds = ct_dataset()
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator = "X1", "99LOCAL"
    code.CodeMeaning = "Reported by Dr Okonkwo"
    ds.AnatomicRegionSequence = Sequence([code])
    return to_bytes(ds)


def receipt(data: bytes) -> tuple[list[str], list[tuple[str, str]], str, str]:
    out = pydicom.dcmread(io.BytesIO(data))
    codes = [(i.CodeValue, i.CodeMeaning) for i in out.DeidentificationMethodCodeSequence]
    return (
        list(out.DeidentificationMethod),
        codes,
        out.PatientIdentityRemoved,
        out.LongitudinalTemporalInformationModified,
    )


def test_each_output_says_what_was_done_to_it_whatever_came_before() -> None:
    """Overlay bits cleared in one instance, a name cleaned in the next, then a plain one, on
    one engine: every output's receipts and bytes are those a fresh engine gives it alone."""
    plain, overlay, named = to_bytes(ct_dataset()), overlay_instance(), named_instance()
    policy = DeidPolicy(trust_code="RTK")
    shared = Deidentifier(KEY, policy)
    results = [shared.process(d) for d in (overlay, named, plain, overlay, plain)]
    alone = []
    for data in (overlay, named, plain, overlay, plain):
        _receipts.cache_clear()  # nothing built before: what the instance gets on its own
        alone.append(Deidentifier(KEY, policy).process(data))
    assert all(r.ok for r in results), [r.reason for r in results]
    assert [r.data for r in results] == [r.data for r in alone]
    marked = sum(glyph(*divmod(i, COLS)) for i in range(ROWS * COLS))
    assert receipt(results[0].data)[0] == [*FRESH_METHOD, f"OVERLAY BITS CLEARED {marked}"]
    assert b"Okonkwo" not in results[1].data
    for r in results[1:3] + results[4:]:
        method, codes, removed, longitudinal = receipt(r.data)
        assert method == FRESH_METHOD
        assert codes[0] == ("113100", "Basic Application Confidentiality Profile")
        assert (removed, longitudinal) == ("YES", "MODIFIED")


def test_key_version_and_options_each_get_their_own_receipts() -> None:
    data = to_bytes(ct_dataset())
    one = Deidentifier(KEY, DeidPolicy(trust_code="RTK")).process(data)
    two = Deidentifier(PseudonymKey(KEY.secret, "k2"), DeidPolicy(trust_code="RTK")).process(data)
    bare = Deidentifier(KEY, DeidPolicy(trust_code="RTK", options=frozenset())).process(data)
    assert receipt(one.data)[0][-1] == f"KEY {KEY.version}" and receipt(two.data)[0][-1] == "KEY k2"
    assert len(receipt(bare.data)[1]) == 1 < len(receipt(one.data)[1])
    assert receipt(bare.data)[3] == "REMOVED"  # no date option: dates emptied


def test_the_shared_elements_are_left_as_built() -> None:
    """After outputs were made, changed and written with them, the cached elements still
    hold what a fresh build holds."""
    options = DeidPolicy(trust_code="RTK").options
    args = (options, KEY.version, "shift", None, 0)
    before = [(t, e.VR, str(e.value)) for t, e in _receipts(*args)]
    engine = Deidentifier(KEY, DeidPolicy(trust_code="RTK"))
    for data in (named_instance(), to_bytes(ct_dataset()), overlay_instance()):
        assert engine.process(data).ok
    ds = Dataset()
    add_receipts(ds, options, KEY.version, "shift")
    # read by keyword, as clean_names and the pixel checks read an output dataset
    assert ds.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    assert [(t, e.VR, str(e.value)) for t, e in _receipts(*args)] == before
    _receipts.cache_clear()
    assert [(t, e.VR, str(e.value)) for t, e in _receipts(*args)] == before
