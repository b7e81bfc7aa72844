"""One instance in, one de-identified instance (or a reason to hold it back) out.

raw bytes -> read -> collect identifiers -> pixel gate -> table walk -> receipts
          -> write (same transfer syntax, pixels untouched) -> verification gate
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset

from . import codec
from .config import DeidPolicy, PseudonymKey
from .engine import InstanceContext, TableWalker
from .pixel_gate import pixel_gate
from .pseudonyms import Pseudonymiser
from .receipts import add_receipts
from .table import compile_table
from .verify import Identifiers, verify_output


@dataclass
class DeidResult:
    """Outcome for one instance. Nothing here identifies the patient."""

    ok: bool
    reason: str | None
    data: bytes | None
    study_uid: str | None = None
    series_uid: str | None = None
    sop_instance_uid: str | None = None
    sop_class_uid: str | None = None
    modality: str | None = None
    patient_pseudonym: str | None = None
    nhs_number_valid: bool = False


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None:
        return None
    if not isinstance(value, str | bytes) and hasattr(value, "__iter__"):
        value = next(iter(value), None)  # first of a multi-valued ID
    return str(value).strip() if value is not None else None


class Deidentifier:
    """PS3.15 Annex E de-identification with keyed pseudonyms and two gates.

    Thread-compatible (one per worker thread is cheapest); safe to reuse across instances.
    """

    def __init__(self, key: PseudonymKey, policy: DeidPolicy) -> None:
        self.key = key
        self.policy = policy
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

    def process(self, raw: bytes) -> DeidResult:
        """De-identify one Part-10 file. Never raises for bad input: it holds it back."""
        try:
            ds = codec.read(raw)
        except codec.Unparseable:
            return DeidResult(False, "unparseable", None)
        try:
            return self._process(ds)
        except Exception as exc:  # noqa: BLE001 - a bad instance must not stop the consumer
            return DeidResult(False, f"deid_error:{type(exc).__name__}", None)

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
        if self._retain_uids:
            ids.uids.clear()

        reason = pixel_gate(ds, self.policy)
        if reason:
            result.reason = reason
            return result

        ctx = InstanceContext(
            patient_pseudonym=pseudonym,
            date_shift_days=self._pseudo.date_shift_days(pseudonym),
            date_mode=self._date_mode,
            retain_uids=self._retain_uids,
            uid=self._pseudo.uid,
            text_is_identifying=lambda text: ids.search_text(text) is not None,
        )
        self._walker.walk(ds, ctx)
        add_receipts(ds, self.policy.options, self.key.version, self._date_mode)

        meta = codec.build_file_meta(ds, ts)
        encoded = codec.write(ds, meta)
        kind = verify_output(
            meta, encoded.scan, encoded.body, encoded.implicit, encoded.little, ids
        )
        if kind:
            result.reason = f"verification_failed:{kind}"
            return result
        result.ok = True
        result.data = encoded.data
        return result
