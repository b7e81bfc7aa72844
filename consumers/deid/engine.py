"""The table-driven walk: one pass per dataset level, every depth, decisions by tag.

Elements that are removed or kept untouched are never decoded (pydicom leaves them raw), which
is what makes this fast; only DA/DT, UI, sequences and rewritten values are converted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag

from .allowlist import (
    BINARY_ALLOW,
    BINARY_VRS,
    DICOM_UID_ROOT,
    KEEP_UID,
    REQUIRED_TEXT,
    SEQUENCE_DENY,
    TEXT_ALLOW,
    TEXT_VRS,
)
from .pseudonyms import shift_date_value
from .table import CompiledTable, safe_private_keys

PATIENT_NAME = 0x00100010
PATIENT_ID = 0x00100020
PIXEL_DATA = 0x7FE00010
#: deleting one of these makes pydicom forget its decoded pixel array (``Dataset.__delitem__``)
PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})

#: Non-identifying dummies for action D (UIDs are pseudonymised instead).
DUMMY: dict[str, object] = {
    "PN": "ANONYMOUS",
    "LO": "REMOVED",
    "SH": "REMOVED",
    "ST": "REMOVED",
    "LT": "REMOVED",
    "UT": "REMOVED",
    "UC": "REMOVED",
    "UR": "urn:smartbox:removed",
    "CS": "REMOVED",
    "AE": "REMOVED",
    "DA": "19000101",
    "DT": "19000101000000",
    "TM": "000000",
    "AS": "000D",
    "IS": "0",
    "DS": "0",
    "US": 0,
    "SS": 0,
    "UL": 0,
    "SL": 0,
    "UV": 0,
    "SV": 0,
    "FL": 0.0,
    "FD": 0.0,
    "OB": b"\x00\x00",
    "OW": b"\x00\x00",
    "UN": b"\x00\x00",
}

_NUMERIC_AMBIGUOUS = frozenset({"US or SS", "US or OW", "US or SS or OW", "OB or OW"})


def _dict_vr(tag: int) -> str | None:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


@dataclass
class InstanceContext:
    """What the walk needs to know about the instance being processed."""

    patient_pseudonym: str
    date_shift_days: int
    date_mode: str  # "shift" | "keep" | "empty"
    retain_uids: bool
    uid: Callable[[str], str]
    text_is_identifying: Callable[[str], bool]
    shifted_dates: bool = False


class TableWalker:
    """Applies a compiled Table E.1-1 plus the default-deny rules to a dataset in place."""

    def __init__(self, table: CompiledTable) -> None:
        self._actions = table.actions
        self._safe_private = safe_private_keys() if table.private == "C" else frozenset()
        self._default_cache: dict[int, str] = {}

    # -- decisions ------------------------------------------------------------------------
    def _default_action(self, tag: int) -> str:
        """Action for a standard attribute the table does not name (allowlist module doc)."""
        action = self._default_cache.get(tag)
        if action is None:
            vr = _dict_vr(tag)
            if vr is None or (tag >> 16) < 0x0008 or (tag & 0xFFFF) == 0:
                action = "X"
            elif vr == "SQ":
                action = "X" if tag in SEQUENCE_DENY else "K"
            elif vr in TEXT_VRS:
                action = "K" if tag in TEXT_ALLOW else "C" if tag in REQUIRED_TEXT else "X"
            elif vr in BINARY_VRS and vr not in _NUMERIC_AMBIGUOUS:
                action = "K" if tag in BINARY_ALLOW else "X"
            else:
                action = "K"
            self._default_cache[tag] = action
        return action

    def _action(self, tag: int) -> str:
        group = tag >> 16
        if 0x5000 <= group <= 0x50FF or 0x6000 <= group <= 0x60FF:
            # Curves and overlays (table pattern rows: X, or C under Clean Graphics) cannot be
            # "cleaned" without looking at the graphics: removed either way (strictest
            # reading). The other overlay elements are default-denied with them.
            return "X"
        action = self._actions.get(tag)
        return action if action is not None else self._default_action(tag)

    # -- walk -----------------------------------------------------------------------------
    def walk(self, ds: Dataset, ctx: InstanceContext) -> None:
        """De-identify `ds` (and every nested item) in place."""
        creators_used: set[int] = set()
        elements = ds._dict  # deleted from directly: ``del ds[tag]`` costs ~1 us each
        dropped_private = False
        for tag in list(elements):
            t = int(tag)
            if t & 0x10000:
                if not self._safe_private:
                    del elements[tag]  # every private element goes (the default)
                    dropped_private = True
                else:
                    self._private(ds, tag, ctx, creators_used)
                continue
            action = self._action(t)
            if action == "X":
                if t in PIXEL_TAGS:
                    del ds[tag]  # pydicom forgets its pixel array with it
                else:
                    del elements[tag]
                continue
            if t == PATIENT_NAME or t == PATIENT_ID:
                ds[tag] = DataElement(
                    tag, "PN" if t == PATIENT_NAME else "LO", ctx.patient_pseudonym
                )
                continue
            raw = ds._dict[tag]  # not get_item: no key conversion (a hot loop)
            vr = raw.VR
            if vr is None or vr == "UN":
                vr = _dict_vr(t) or vr
            if action == "K" or action == "C":
                if vr in ("DA", "DT", "UI", "SQ") or (action == "C" and vr in TEXT_VRS):
                    self._keep(ds, tag, vr, action, ctx)
            elif action == "Z":
                self._empty(ds, tag, vr)
            elif action == "D":
                self._dummy(ds, tag, vr, ctx)
            elif action == "U":
                self._uid(ds, tag, ctx)
            else:  # pragma: no cover - compile_table only produces KXZDUC
                raise ValueError(f"unimplemented action {action!r}")
        if dropped_private:
            ds._private_blocks = {}  # pydicom's cache of private blocks, as ``del`` resets it
        if self._safe_private:
            self._drop_unused_creators(ds, creators_used)

    def _keep(self, ds: Dataset, tag: BaseTag, vr: str, action: str, ctx: InstanceContext) -> None:
        if vr == "SQ":
            for item in ds[tag].value:
                self.walk(item, ctx)
        elif vr == "UI":
            if not ctx.retain_uids and tag not in KEEP_UID:
                self._uid(ds, tag, ctx, keep_dicom_root=True)
        elif vr in ("DA", "DT"):
            self._date(ds, tag, vr, ctx)
        else:  # free text under C: kept only if it holds nothing identifying
            value = ds[tag].value
            text = "\\".join(str(v) for v in value) if isinstance(value, MultiValue) else value
            if text and ctx.text_is_identifying(str(text)):
                self._empty(ds, tag, vr)

    def _date(self, ds: Dataset, tag: BaseTag, vr: str, ctx: InstanceContext) -> None:
        if ctx.date_mode == "keep":
            return
        text = _raw_text(ds, tag, vr)
        if text is not None:  # not converted by pydicom: the same value, straight from bytes
            if ctx.date_mode == "empty":
                ds._dict[tag] = DataElement(tag, vr, "")
                return
            ds._dict[tag] = DataElement(tag, vr, shift_date_value(vr, text, ctx.date_shift_days))
            ctx.shifted_dates = True
            return
        elem = ds[tag]
        if elem.VM == 0:
            return
        if ctx.date_mode == "empty":
            elem.value = ""
            return
        value = elem.value
        text = "\\".join(value) if isinstance(value, MultiValue) else str(value)
        elem.value = shift_date_value(vr, text, ctx.date_shift_days)
        ctx.shifted_dates = True

    @staticmethod
    def _empty(ds: Dataset, tag: BaseTag, vr: str | None) -> None:
        if vr is None:
            del ds[tag]
        elif vr == "SQ":
            ds[tag] = DataElement(tag, "SQ", Sequence([]))
        else:
            ds[tag] = DataElement(tag, vr, None)

    def _dummy(self, ds: Dataset, tag: BaseTag, vr: str | None, ctx: InstanceContext) -> None:
        if vr == "SQ":
            for item in ds[tag].value:
                self.walk(item, ctx)
        elif vr == "UI":
            self._uid(ds, tag, ctx)
        elif vr in DUMMY:
            ds[tag] = DataElement(tag, vr, DUMMY[vr])
        elif vr is None:
            del ds[tag]
        else:
            self._empty(ds, tag, vr)

    @staticmethod
    def _uid(
        ds: Dataset, tag: BaseTag, ctx: InstanceContext, keep_dicom_root: bool = False
    ) -> None:
        if ctx.retain_uids:
            return
        text = _raw_text(ds, tag, "UI")
        if text is not None:  # not converted by pydicom: the same values, straight from bytes
            new = _new_uids(text.split("\\"), ctx, keep_dicom_root)
            ds._dict[tag] = DataElement(tag, "UI", new if len(new) > 1 else new[0])
            return
        elem = ds[tag]
        if elem.VM == 0:
            return
        values = list(elem.value) if isinstance(elem.value, MultiValue) else [elem.value]
        new = _new_uids(values, ctx, keep_dicom_root)
        elem.value = new if len(new) > 1 else new[0]
        if elem.VR != "UI":
            ds[tag] = DataElement(tag, "UI", elem.value)

    # -- private --------------------------------------------------------------------------
    def _private(
        self, ds: Dataset, tag: BaseTag, ctx: InstanceContext, creators_used: set[int]
    ) -> None:
        t = int(tag)
        elem_no = t & 0xFFFF
        if not self._safe_private or elem_no < 0x0010:
            del ds[tag]
            return
        if elem_no <= 0x00FF:
            return  # a private creator: kept only if one of its elements is (see walk)
        creator_tag = (t & 0xFFFF0000) | (elem_no >> 8)
        keep = False
        if elem_no > 0x00FF and creator_tag in ds:
            creator = ds[creator_tag].value
            key = (t >> 16, str(creator).strip().upper(), elem_no & 0xFF)
            keep = key in self._safe_private
        if not keep:
            del ds[tag]
            return
        creators_used.add(creator_tag)
        raw = ds._dict[tag]
        if raw.VR == "SQ" or (raw.VR is None and ds[tag].VR == "SQ"):
            for item in ds[tag].value:
                self.walk(item, ctx)
        elif raw.VR in ("DA", "DT", "UI"):
            self._keep(ds, tag, raw.VR, "K", ctx)

    @staticmethod
    def _drop_unused_creators(ds: Dataset, creators_used: set[int]) -> None:
        for tag in list(ds.keys()):
            t = int(tag)
            if t & 0x10000 and 0x0010 <= (t & 0xFFFF) <= 0x00FF and t not in creators_used:
                del ds[tag]


def _raw_text(ds: Dataset, tag: BaseTag, vr: str) -> str | None:
    """The value of a DA, DT or UI element that pydicom has not converted yet, as pydicom
    would convert it (ISO 8859-1, trailing spaces and NULs removed), or None when it has
    been converted, is empty (or only padding) or was read with another VR: then
    ``ds[tag]`` converts it. Converting costs tens of microseconds per element (hooks,
    converters, value types), and its result was only ever turned back into this text.
    ``tests/unit/deid/test_engine_raw_values.py``: the same bytes out either way."""
    raw = ds._dict.get(tag)
    if type(raw) is not RawDataElement or not raw.value or (raw.VR is not None and raw.VR != vr):
        return None
    return raw.value.decode("latin-1").rstrip(" \0") or None


def _new_uids(values: list, ctx: InstanceContext, keep_dicom_root: bool) -> list[str]:
    """Each UID value replaced by its pseudonym (empty values, and DICOM's own UIDs where
    asked, kept)."""
    return [
        v if not v or (keep_dicom_root and v.startswith(DICOM_UID_ROOT)) else ctx.uid(v)
        for v in (str(x).strip("\0 ") for x in values)
    ]
