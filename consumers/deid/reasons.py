"""Why an instance is held back: the one closed vocabulary.

Every hold-back reason any stage can produce is a member of ``Reason`` (the pixel gate, mask
rules, the verification gate, OCR, the codec, the engine, the anonymiser, the export's
withdrawal check). Reasons are made as members, never spelled as strings, so an unknown one
fails where it is made (``Reason("...")`` raises ``ValueError``; so does ``DeidResult`` given
one), not later when ``study.staged`` fails its schema and a whole study is dead-lettered.

The message schema enumerates the same values: ``schemas/envelope.v1.schema.json``
``$defs/reason`` is generated from this module (``python -m consumers.deid.reasons --write``;
``--check`` exits 1 if the file disagrees; a unit test checks it too). Metric label values are
``Reason.label``: the part before ``:``, so every ``verification_failed:<kind>`` counts under
``verification_failed``.

A reason says *what*, never *which value*: the optional ``detail`` beside it (the exception
class of a ``deid_error``, the identifier kind of a pixel-data hit) is a short identifier-like
token (``DETAIL_PATTERN``), never an exception message, which may quote patient data.
"""

from __future__ import annotations

import json
import re
import sys
from enum import StrEnum
from pathlib import Path

_VERIFICATION = "verification_failed:"


class Reason(StrEnum):
    """A hold-back reason (its value is what manifests, messages and metrics carry)."""

    # codec: the bytes cannot be read, or inflating them would exceed the configured bound
    UNPARSEABLE = "unparseable"
    DECOMPRESSION_LIMIT = "decompression_limit"
    # engine: an unexpected exception de-identifying this one instance (detail: its class)
    DEID_ERROR = "deid_error"
    # pixel gate
    BURNED_IN_ANNOTATION = "burned_in_annotation"
    RECOGNIZABLE_VISUAL_FEATURES = "recognizable_visual_features"
    MODALITY_NOT_ALLOWED = "modality_not_allowed"
    SOP_CLASS_NOT_ALLOWED = "sop_class_not_allowed"
    IMAGE_TYPE_SCREEN_SAVE = "image_type_screen_save"
    IMAGE_TYPE_DOSE_REPORT = "image_type_dose_report"
    IMAGE_TYPE_SECONDARY = "image_type_secondary"
    DEVICE_BURNS_IN_TEXT = "device_burns_in_text"
    # mask rules
    MASK_RULE_COMPRESSED = "mask_rule_compressed"
    MASK_RULE_UNSUPPORTED = "mask_rule_unsupported"
    # verification gate: native pixel data whose length does not fit its image attributes
    PIXEL_DATA_LENGTH_MISMATCH = "pixel_data_length_mismatch"
    # verification gate: an identifier of the source found in the output, by kind
    VERIFICATION_PERSON_NAME = "verification_failed:person_name"
    VERIFICATION_PATIENT_ID = "verification_failed:patient_id"
    VERIFICATION_OTHER_PATIENT_ID = "verification_failed:other_patient_id"
    VERIFICATION_NHS_NUMBER = "verification_failed:nhs_number"
    VERIFICATION_ACCESSION_NUMBER = "verification_failed:accession_number"
    VERIFICATION_STUDY_ID = "verification_failed:study_id"
    VERIFICATION_INSTITUTION = "verification_failed:institution"
    VERIFICATION_INSTITUTION_ADDRESS = "verification_failed:institution_address"
    VERIFICATION_STATION_NAME = "verification_failed:station_name"
    VERIFICATION_DEVICE_SERIAL = "verification_failed:device_serial"
    VERIFICATION_ADDRESS = "verification_failed:address"
    VERIFICATION_PHONE_NUMBER = "verification_failed:phone_number"
    VERIFICATION_BIRTH_DATE = "verification_failed:birth_date"
    VERIFICATION_ORIGINAL_UID = "verification_failed:original_uid"
    VERIFICATION_IDENTIFIER = "verification_failed:identifier"
    VERIFICATION_NHS_NUMBER_PATTERN = "verification_failed:nhs_number_pattern"
    VERIFICATION_POSTCODE_PATTERN = "verification_failed:postcode_pattern"
    VERIFICATION_PHONE_PATTERN = "verification_failed:phone_pattern"
    # verification gate: retained free text holds a person name of the name vocabulary
    # (``names``; under ``unknown_names = "hold"``, or where cleaning could not remove it)
    VERIFICATION_NAME_VOCABULARY = "verification_failed:name_vocabulary"
    # verification gate: an identifier in native pixel bytes (detail: its kind)
    VERIFICATION_PIXEL_DATA = "verification_failed:pixel_data"
    # compressed pixel data that may carry overlay graphics in bits outside Bits Stored
    # (60xx attributes, or a codestream precision above Bits Stored): cannot be cleared blind
    OVERLAY_IN_COMPRESSED_PIXELS = "overlay_in_compressed_pixels"
    # an overlay embedded in the pixel cells at a bit inside Bits Stored (not removable),
    # or Bits Allocated / Bits Stored / High Bit that contradict each other
    OVERLAY_IN_STORED_BITS = "overlay_in_stored_bits"
    PIXEL_BIT_LAYOUT_INVALID = "pixel_bit_layout_invalid"
    # allow-list profile: the instance's SOP class has no allow-list (``allowlist_iods``)
    IOD_NOT_IN_ALLOW_LIST = "iod_not_in_allow_list"
    # optional OCR verifier
    VERIFICATION_OCR_TEXT = "verification_failed:ocr_text"
    VERIFICATION_OCR_ERROR = "verification_failed:ocr_error"
    # anonymiser, per instance: the quarantined original is gone, corrupt, or badly named
    SOURCE_MISSING = "source_missing"
    SOURCE_CHECKSUM_MISMATCH = "source_checksum_mismatch"
    SOURCE_INVALID = "source_invalid"
    # anonymiser, per study: its instances disagree on who the patient is (name, ID, birth
    # date, NHS number): a mis-filed or merged study, held back together, never one pseudonym
    PATIENT_IDENTITY_CONFLICT = "patient_identity_conflict"
    # national data opt-out: the patient withdrew (the export's withdrawal check)
    WITHDRAWN = "withdrawn"
    # smartbox deidentify: an input file could not be read (detail: errno name)
    UNREADABLE = "unreadable"

    @classmethod
    def verification(cls, kind: str) -> Reason:
        """The reason for a verification-gate hit of ``kind``; ValueError if unknown."""
        return cls(_VERIFICATION + kind)

    @property
    def label(self) -> str:
        """The metric label value: the reason's family (``verification_failed:x`` -> its
        prefix), from a closed set like the reasons themselves."""
        return self.value.split(":", 1)[0]


#: The ``detail`` beside a reason: an identifier-like token, never free text.
DETAIL_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.]{0,79}$"
_DETAIL = re.compile(DETAIL_PATTERN)
_NOT_DETAIL = re.compile(r"[^A-Za-z0-9_.]")


def check_detail(detail: str | None) -> str | None:
    """``detail`` if it is a valid detail token (or None); ValueError otherwise."""
    if detail is not None and not _DETAIL.match(detail):
        raise ValueError("a hold-back detail must be an identifier-like token")
    return detail


def exception_detail(exc: BaseException) -> str:
    """The detail recorded for an unexpected exception: its class name, sanitised. Never its
    message (``ValueError("Invalid value for VR DA: 'Smith'")`` quotes the input)."""
    name = _NOT_DETAIL.sub("", type(exc).__name__)[:80]
    if not name or not _DETAIL.match(name):
        name = ("E" + name)[:80] if name else "Exception"
    return name


def schema_values() -> list[str]:
    """The enum of ``$defs/reason`` in the message schemas: every value, sorted."""
    return sorted(r.value for r in Reason)


SCHEMA_FILE = Path(__file__).resolve().parents[2] / "schemas" / "envelope.v1.schema.json"
_SCHEMA_LINE = re.compile(r'^(?P<indent>\s*)"reason": \{.*\}(?P<comma>,?)$', re.MULTILINE)


def schema_reason_line(indent: str = "    ", comma: str = "") -> str:
    """The generated ``"reason": {...}`` line of the envelope's ``$defs``."""
    definition = {"type": "string", "enum": schema_values()}
    return f'{indent}"reason": {json.dumps(definition, separators=(", ", ": "))}{comma}'


def write_schema(path: Path = SCHEMA_FILE) -> bool:
    """Rewrite the ``$defs/reason`` line of the envelope schema; True if it changed."""
    text = path.read_text("utf-8")
    match = _SCHEMA_LINE.search(text)
    if match is None:
        raise ValueError(f'{path}: no single-line "reason" definition to replace')
    line = schema_reason_line(match["indent"], match["comma"])
    new = text[: match.start()] + line + text[match.end() :]
    if new != text:
        path.write_text(new, "utf-8")
    return new != text


def main(argv: list[str]) -> int:
    """``--write``: regenerate the schema's reason enum; ``--check``: exit 1 if stale."""
    if argv == ["--write"]:
        print("updated" if write_schema() else "up to date", SCHEMA_FILE)
        return 0
    if argv == ["--check"]:
        doc = json.loads(SCHEMA_FILE.read_text("utf-8"))
        ok = doc["$defs"]["reason"].get("enum") == schema_values()
        print("up to date" if ok else "stale: run python -m consumers.deid.reasons --write")
        return 0 if ok else 1
    print("usage: python -m consumers.deid.reasons --write | --check", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
