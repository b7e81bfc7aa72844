"""One instance in, one de-identified instance (or a reason to hold it back) out.

raw bytes -> read (deflated: inflated within bounds) -> collect identifiers -> pixel gate
(hold back, or mask rule) -> bits outside Bits Stored cleared -> table walk -> receipts ->
write (same transfer syntax, pixels untouched unless masked or cleared) -> verification gate
(text, bytes, pixel data) -> optional OCR

Every way out that is not a de-identified instance is a ``Reason`` (``reasons``): a bad
instance is held back, never raised, so it cannot stop the rest of its study.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

from . import codec, ocr
from .allowlist_iods import allow_lists, apply_allow_list
from .config import DeidConfigError, DeidPolicy, PseudonymKey, tesseract_path
from .engine import InstanceContext, TableWalker
from .identity import Fingerprint, fingerprint
from .masking import apply_mask
from .names import clean_names, find_name, vocabulary
from .pixel_bits import clean_pixels, has_overlay_attributes
from .pixel_gate import decide
from .pixels import pixel_reason
from .pseudonyms import Linkage, Pseudonymiser
from .reasons import Reason, check_detail, exception_detail
from .receipts import add_receipts
from .table import compile_table
from .verify import Identifiers, verify_output


@dataclass
class DeidResult:
    """Outcome for one instance. Nothing here identifies the patient, except ``linkage``
    (for the encrypted identity index only; never logged: it is left out of ``repr``).

    ``reason`` is a ``Reason`` (a plain string is accepted only if it is one: anything else
    raises ``ValueError`` where it is set, a programming error); ``detail`` an optional
    identifier-like token beside it (exception class, identifier kind), never a value.
    """

    ok: bool
    reason: Reason | None
    data: bytes | None
    study_uid: str | None = None
    series_uid: str | None = None
    sop_instance_uid: str | None = None
    sop_class_uid: str | None = None
    modality: str | None = None
    patient_pseudonym: str | None = None
    nhs_number_valid: bool = False
    #: name of the mask rule whose rectangles were blanked ("" if unnamed), else None
    mask_rule: str | None = None
    #: samples whose bits outside Bits Stored were cleared (overlay bits; ``pixel_bits``)
    pixel_bits_cleared: int = 0
    #: keyed fingerprints of who the source says the patient is (``identity``), for the
    #: study consistency check; set whenever the source could be read, never logged
    identity: Fingerprint | None = field(default=None, repr=False, compare=False)
    detail: str | None = None
    #: the messages behind this instance's pseudonyms, set when it is released (key rotation)
    linkage: Linkage | None = field(default=None, repr=False, compare=False)

    def __setattr__(self, name: str, value: Any) -> None:
        # validated where it is made, not when study.staged finally fails its schema
        if name == "reason" and value is not None:
            value = Reason(value)
        elif name == "detail":
            value = check_detail(value)
        object.__setattr__(self, name, value)


_TEXT_RAW_VRS = frozenset({None, "UI", "CS", "LO", "SH", "UN"})


def _text(ds: Dataset, keyword: str) -> str | None:
    """The first value of an ID, UID or code, stripped; None if absent. An ASCII value still
    raw is decoded from its bytes (as pydicom would: ASCII reads the same in every character
    set) instead of converting the element, once for each of a dozen look-ups."""
    tag = _TAGS.get(keyword)
    if tag is None:
        tag = _TAGS[keyword] = BaseTag(tag_for_keyword(keyword) or 0)
    raw = ds._dict.get(tag)
    if raw is None:
        return None
    if (
        isinstance(raw, RawDataElement)
        and isinstance(raw.value, bytes)
        and raw.VR in _TEXT_RAW_VRS
        and raw.value.isascii()
        and b"\0" not in raw.value.rstrip(b"\0 ")
    ):
        return raw.value.split(b"\\", 1)[0].decode("ascii").strip(" \0").strip()
    value = ds.get(keyword)
    if value is None:
        return None
    if not isinstance(value, str | bytes) and hasattr(value, "__iter__"):
        value = next(iter(value), None)  # first of a multi-valued ID
    return str(value).strip() if value is not None else None


_TAGS: dict[str, BaseTag] = {}


class Deidentifier:
    """PS3.15 Annex E de-identification with keyed pseudonyms and two gates.

    Thread-compatible (one per worker thread is cheapest); safe to reuse across instances.
    Raises ``DeidConfigError`` if the policy enables OCR and ``tesseract`` is not installed.
    """

    def __init__(self, key: PseudonymKey, policy: DeidPolicy) -> None:
        self.key = key
        self.policy = policy
        self._tesseract = tesseract_path() if policy.ocr else None
        if policy.ocr and self._tesseract is None:
            raise DeidConfigError(
                "the policy enables OCR but tesseract is not on PATH "
                "(apt-get install tesseract-ocr, or set ocr = false)"
            )
        if policy.unknown_names != "off":
            vocabulary()  # loaded now (its index: a few ms), not at the first instance
        if policy.allow_list:
            allow_lists()
        self._pseudo = Pseudonymiser(key, policy.trust_code, policy.max_date_shift_days)
        self._walker = TableWalker(compile_table(policy.options))
        opts = policy.options
        self._retain_uids = "retain_uids" in opts
        if "retain_longitudinal_modified_dates" in opts:
            self._date_mode = "shift"
        elif "retain_longitudinal_full_dates" in opts:
            self._date_mode = "keep"
        else:
            self._date_mode = "empty"

    def uid(self, original: str) -> str:
        """``2.25.`` + first 128 bits of HMAC-SHA256(secret, b"uid:" + original)."""
        return self._pseudo.uid(original)

    def patient_pseudonym(self, nhs_number: str | None, local_id: str | None) -> tuple[str, bool]:
        """``(pseudonym, nhs_number_valid)``; see ``Pseudonymiser.patient``."""
        return self._pseudo.patient(nhs_number, local_id)

    def _new_uid(self, ds: Dataset, keyword: str) -> str | None:
        value = _text(ds, keyword)
        if not value:
            return None
        return value if self._retain_uids else self.uid(value)

    def _linkage(self, ds: Dataset, pseudonym: str, study_uid: str | None) -> Linkage:
        """What the identity index needs to map this instance's pseudonyms after a rotation."""
        message, _valid = self._pseudo.patient_message(
            _text(ds, self.policy.nhs_number_attribute), _text(ds, "PatientID")
        )
        original = _text(ds, "StudyInstanceUID")
        mapped = original and not self._retain_uids
        return Linkage(
            patient=message,
            patient_pseudonym=pseudonym,
            date_shift_days=self._pseudo.date_shift_days(pseudonym),
            study_uid=original if mapped else None,
            study_pseudonym=study_uid if mapped else None,
        )

    def _text_check(self, ids: Identifiers) -> Callable[[str], bool]:
        """What makes free text under the clean action identifying: the instance's
        identifiers and the patterns, and (``unknown_names = "clean"``) vocabulary names."""
        if self.policy.unknown_names == "clean":
            return lambda text: ids.search_text(text) is not None or find_name(text) is not None
        return lambda text: ids.search_text(text) is not None

    def process(self, raw: bytes) -> DeidResult:
        """De-identify one Part-10 file. Never raises for bad input: it holds it back."""
        try:
            ds = codec.read(raw, self.policy.inflate)
        except codec.DecompressionLimit:
            return DeidResult(False, Reason.DECOMPRESSION_LIMIT, None)
        except codec.Unparseable:
            return DeidResult(False, Reason.UNPARSEABLE, None)
        try:
            return self._process(ds)
        except Exception as exc:  # noqa: BLE001 - a bad instance must not stop its study
            # the class only: an exception's message may quote the input's values
            return DeidResult(False, Reason.DEID_ERROR, None, detail=exception_detail(exc))

    def _process(self, ds: Dataset) -> DeidResult:
        pseudonym, nhs_ok = self.patient_pseudonym(
            _text(ds, self.policy.nhs_number_attribute), _text(ds, "PatientID")
        )
        result = DeidResult(
            ok=False,
            reason=None,
            data=None,
            study_uid=self._new_uid(ds, "StudyInstanceUID"),
            series_uid=self._new_uid(ds, "SeriesInstanceUID"),
            sop_instance_uid=self._new_uid(ds, "SOPInstanceUID"),
            sop_class_uid=_text(ds, "SOPClassUID"),
            modality=_text(ds, "Modality"),
            patient_pseudonym=pseudonym,
            nhs_number_valid=nhs_ok,
        )
        ts = codec.transfer_syntax(ds)
        source_meta = getattr(ds, "file_meta", None)

        ids = Identifiers()
        ids.collect(ds, self.policy.nhs_number_attribute, source_meta)
        ids.own_values.add(pseudonym)
        ids.check_names = self.policy.unknown_names != "off"
        result.identity = fingerprint(self.key.secret, ids.patient, ids.nhs_tag)
        if self._retain_uids:
            ids.uids.clear()
        linkage = self._linkage(ds, pseudonym, result.study_uid)  # before the walk: originals

        decision = decide(ds, self.policy)
        if decision.mask is not None:
            reason = apply_mask(ds, decision.mask, ts)
            if reason:
                result.reason = reason
                return result
            result.mask_rule = decision.mask.name
        elif decision.reason:
            result.reason = decision.reason
            return result
        # overlay bitmaps in unused pixel bits: cleared (native) or held back (compressed)
        reason, result.pixel_bits_cleared, lanes = clean_pixels(ds, ts, has_overlay_attributes(ds))
        if reason:
            result.reason = reason
            return result

        ctx = InstanceContext(
            patient_pseudonym=pseudonym,
            date_shift_days=self._pseudo.date_shift_days(pseudonym),
            date_mode=self._date_mode,
            retain_uids=self._retain_uids,
            uid=self._pseudo.uid,
            text_is_identifying=self._text_check(ids),
        )
        self._walker.walk(ds, ctx)
        if self.policy.allow_list:  # only what the IOD lists stays (allowlist_iods)
            reason = apply_allow_list(ds)
            if reason:
                result.reason = reason
                return result
        add_receipts(
            ds,
            self.policy.options,
            self.key.version,
            self._date_mode,
            result.mask_rule,
            result.pixel_bits_cleared,
        )

        encoded = codec.write(ds, ts)
        kind = verify_output(encoded, ids)
        if kind == "name_vocabulary" and self.policy.unknown_names == "clean":
            # a name the source never named, in text kept as it was: replace the values
            # that hold one, then the whole gate again on the new bytes
            if clean_names(ds, ids.own_values):
                encoded = codec.write(ds, ts)
                kind = verify_output(encoded, ids)
        if kind:
            result.reason = Reason.verification(kind)
            return result
        held = pixel_reason(ds, ts, encoded.pixels, ids, lanes)
        if held is not None:
            result.reason, result.detail = held
            return result
        if self._tesseract and (result.mask_rule is not None or self.policy.ocr_scope == "all"):
            reason = ocr.check(
                ds,
                ts,
                ids,
                self.policy.ocr_match,
                self.policy.ocr_max_frames,
                self._tesseract,
            )
            if reason:
                result.reason = reason
                return result
        result.ok = True
        result.data = encoded.data
        result.linkage = linkage
        return result
