"""Allow-list mode: keep only the attributes the instance's IOD lists, remove everything else.

The default profile is the PS3.15 table plus default deny: an attribute the table does not
name is kept when its VR cannot carry a name (numbers, codes, dates shifted, UIDs replaced).
A trust can ask for more (``[deidentification] allow_list = true``): after the table walk,
every attribute that is not in the instance's IOD - its modules, as PS3.3 lists them - is
removed too, at every depth, whatever its VR. Nothing the walk removed or emptied comes back:
this only ever removes more.

``data/allow_list.json`` holds the lists and their source (PS3.3 2024b, the modules of the
CT Image, MR Image, Computed Radiography Image and Digital X-Ray Image IODs). An instance of
any other SOP class is held back (``iod_not_in_allow_list``): an allow-list cannot keep what
it does not know. Items of sequences keep the attributes of the Code Sequence, SOP Instance
Reference and Request Attributes macros and of the items these modules define, plus the
IOD's own list. Private attributes are removed (even under Retain Safe Private).
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

from pydicom.datadict import dictionary_has_tag, dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from .reasons import Reason


@cache
def allow_lists() -> tuple[dict[str, frozenset[int]], frozenset[int]]:
    """(SOP Class UID -> the tags its IOD allows at the top level, the tags allowed in
    sequence items besides those)."""
    text = resources.files(__package__).joinpath("data", "allow_list.json").read_text("utf-8")
    doc = json.loads(text)
    modules = {name: frozenset(_tag(kw) for kw in kws) for name, kws in doc["modules"].items()}
    by_class: dict[str, frozenset[int]] = {}
    for iod in doc["iods"].values():
        tags = frozenset().union(*(modules[m] for m in iod["modules"]))
        for uid in iod["sop_classes"]:
            by_class[uid] = tags
    nested = frozenset().union(*(modules[m] for m in doc["nested"]))
    return by_class, nested


def _tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(f"allow_list.json: not a DICOM keyword: {keyword}")
    return int(tag)


def apply_allow_list(ds: Dataset) -> Reason | None:
    """Remove, in place, every attribute of `ds` its IOD does not list (module docstring);
    ``iod_not_in_allow_list`` (nothing removed) if its SOP class has no list."""
    by_class, nested = allow_lists()
    allowed = by_class.get(str(ds.get("SOPClassUID", "")).strip())
    if allowed is None:
        return Reason.IOD_NOT_IN_ALLOW_LIST
    _keep(ds, allowed, allowed | nested)
    return None


def _keep(ds: Dataset, allowed: frozenset[int], in_items: frozenset[int]) -> None:
    for tag in list(ds.keys()):
        if int(tag) not in allowed:
            del ds[tag]
            continue
        raw = ds._dict[tag]  # not ds[tag]: converting Pixel Data would lose its encoding
        vr = raw.VR or (dictionary_VR(tag) if dictionary_has_tag(tag) else None)
        if vr == "SQ":
            value = ds[tag].value
            for item in value if isinstance(value, Sequence) else ():
                _keep(item, in_items, in_items)
