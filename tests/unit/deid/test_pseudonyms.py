"""Keys, pseudonyms, UIDs and date shifts."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from conftest import KEY, NHS

from consumers.deid import Deidentifier, DeidPolicy, PseudonymKey
from consumers.deid.pseudonyms import nhs_number_valid, shift_da, shift_date_value, shift_dt
from smartbox.errors import ConfigError


def test_missing_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="SMARTBOX_PSEUDONYM_KEY"):
        PseudonymKey.from_env({})
    with pytest.raises(ConfigError):
        PseudonymKey.from_env({"SMARTBOX_PSEUDONYM_KEY": "   "})


def test_key_from_env_and_file(tmp_path) -> None:
    key = PseudonymKey.from_env(
        {"SMARTBOX_PSEUDONYM_KEY": "s3cret-value-0123", "SMARTBOX_PSEUDONYM_KEY_VERSION": "k2"}
    )
    assert key.secret == b"s3cret-value-0123" and key.version == "k2"
    path = tmp_path / "key"
    path.write_bytes(b"file-secret-0123456\n")
    key = PseudonymKey.from_env({"SMARTBOX_PSEUDONYM_KEY_FILE": str(path)})
    assert key.secret == b"file-secret-0123456" and key.version == "k1"
    assert "file-secret" not in repr(key) and "file-secret" not in str(key)
    with pytest.raises(ConfigError, match="cannot be read"):
        PseudonymKey.from_env({"SMARTBOX_PSEUDONYM_KEY_FILE": str(tmp_path / "missing")})


def test_nhs_number_validation() -> None:
    assert nhs_number_valid(NHS) == NHS
    assert nhs_number_valid("943 476 5919") == NHS
    assert nhs_number_valid("9434765918") is None  # bad check digit
    assert nhs_number_valid("123456789") is None
    assert nhs_number_valid(None) is None


def test_uid_formula(deid: Deidentifier) -> None:
    digest = hmac.new(KEY.secret, b"uid:1.2.3.4", hashlib.sha256).digest()
    assert deid.uid("1.2.3.4") == "2.25." + str(int.from_bytes(digest[:16], "big"))
    assert len(deid.uid("1.2.3.4")) <= 64


def test_same_nhs_number_two_trusts_same_pseudonym() -> None:
    a = Deidentifier(KEY, DeidPolicy(trust_code="RTK"))
    b = Deidentifier(KEY, DeidPolicy(trust_code="RX1", nhs_number_attribute="OtherPatientIDs"))
    assert a.patient_pseudonym(NHS, "local-1") == b.patient_pseudonym("943 476 5919", "x")
    assert a.patient_pseudonym(NHS, None)[1] is True


def test_invalid_nhs_falls_back_to_trust_scoped() -> None:
    a = Deidentifier(KEY, DeidPolicy(trust_code="RTK"))
    b = Deidentifier(KEY, DeidPolicy(trust_code="RX1"))
    pa, va = a.patient_pseudonym("1234567890", "MRN1")
    pb, vb = b.patient_pseudonym("1234567890", "MRN1")
    assert not va and not vb and pa != pb
    assert a.patient_pseudonym(None, "MRN1") == (pa, False)


def test_different_key_different_pseudonyms() -> None:
    other = PseudonymKey(secret=b"another-secret", version="k8")
    a = Deidentifier(KEY, DeidPolicy(trust_code="RTK"))
    b = Deidentifier(other, DeidPolicy(trust_code="RTK"))
    assert a.patient_pseudonym(NHS, None) != b.patient_pseudonym(NHS, None)
    assert a.uid("1.2.3") != b.uid("1.2.3")


def test_date_shift_range_never_zero() -> None:
    from consumers.deid.pseudonyms import Pseudonymiser

    p = Pseudonymiser(KEY, "RTK", 30)
    shifts = {p.date_shift_days(f"P{i}") for i in range(2000)}
    assert 0 not in shifts
    assert min(shifts) == -30 and max(shifts) == 30


def test_date_shifting() -> None:
    assert shift_da("20240301", -1) == "20240229"
    assert shift_da("2024.03.01", 1) == "20240302"
    assert shift_da("garbage", 1) == ""
    assert shift_dt("20240301120000.123+0100", 2) == "20240303120000.123+0100"
    assert shift_dt("2024", 3) == "2024"
    assert shift_date_value("DA", "20240101\\20240102", 1) == "20240102\\20240103"
    assert shift_date_value("DA", "20240101-20240131", 1) == "20240102-20240201"
