"""Hold-back reasons are one closed vocabulary, validated where they are made."""

from __future__ import annotations

import pytest
from conftest import ct_dataset, to_bytes

from consumers.deid import Deidentifier, DeidResult, Reason
from consumers.deid.identifiers import KINDS
from consumers.deid.reasons import exception_detail

OWN_KINDS = {"pixel_data", "ocr_text", "ocr_error"}  # the gate's own, not identifier kinds


@pytest.mark.parametrize(
    "reason", ["deid_error:NotImplementedError", "unknown", "Burned_In_Annotation", ""]
)
def test_a_result_with_a_reason_outside_the_vocabulary_is_a_programming_error(
    reason: str,
) -> None:
    with pytest.raises(ValueError):
        DeidResult(False, reason, None)
    result = DeidResult(False, None, None)
    with pytest.raises(ValueError):
        result.reason = reason


def test_reasons_given_as_strings_become_members() -> None:
    result = DeidResult(False, "burned_in_annotation", None)
    assert result.reason is Reason.BURNED_IN_ANNOTATION


@pytest.mark.parametrize("detail", ["Smith John", "Invalid value for VR DA: 'Smith'", "1abc", ""])
def test_a_detail_is_a_token_never_text(detail: str) -> None:
    with pytest.raises(ValueError):
        DeidResult(False, Reason.DEID_ERROR, None, detail=detail)


def test_exception_detail_is_the_sanitised_class_name_never_the_message() -> None:
    assert exception_detail(NotImplementedError("Featherstonehaugh 9434765919")) == (
        "NotImplementedError"
    )
    odd = type("Smith John^Araminta", (Exception,), {})
    assert exception_detail(odd("x")) == "SmithJohnAraminta"
    assert exception_detail(type("9 lives", (Exception,), {})()) == "E9lives"


def test_every_identifier_kind_has_its_verification_reason_and_back() -> None:
    for kind in KINDS:
        assert Reason.verification(kind).value == f"verification_failed:{kind}"
    gate = {r.value.split(":", 1)[1] for r in Reason if r.label == "verification_failed"}
    assert gate - OWN_KINDS == KINDS
    with pytest.raises(ValueError):
        Reason.verification("Smith")


def test_metric_labels_are_the_families_of_the_vocabulary() -> None:
    labels = {r.label for r in Reason}
    assert "verification_failed" in labels and "deid_error" in labels
    assert all(":" not in label for label in labels)
    assert Reason.VERIFICATION_PERSON_NAME.label == "verification_failed"


def test_an_unexpected_exception_is_held_back_as_deid_error_with_its_class(
    deid: Deidentifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(_ds: object) -> None:
        raise KeyError("Featherstonehaugh")

    monkeypatch.setattr(deid, "_process", boom)
    result = deid.process(to_bytes(ct_dataset()))
    assert (result.ok, result.reason, result.detail) == (False, Reason.DEID_ERROR, "KeyError")
