"""The identity index: encrypted, named by blind hashes, and the rules of a rotation."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from helpers.quarantine import part10, quarantine_batch
from helpers.receiver_env import make_trust

from consumers.anonymiser import Anonymiser
from consumers.deid import PolicyBuilder
from consumers.identity_index import IdentityIndex
from consumers.rotation import rotate
from producers.receiver import intake_key
from producers.receiver.scp import instance_key_for
from smartbox import layout
from smartbox.app import cli
from smartbox.bus import MemoryBus
from smartbox.errors import ConfigError, PermanentError
from smartbox.keys import RegionalKey
from smartbox.store import LocalStore
from smartbox.synthetic import make_ct_study

K1 = RegionalKey(b"index-unit-key-one-0123456789abc", "k1")
INDEX_KEY = RegionalKey(b"index-unit-index-key-0123456789ab", "i1")
NHS = "9434765919"


def _staged(tmp_path: Path) -> tuple[LocalStore, IdentityIndex, str, list[bytes]]:
    store, bus, trust = LocalStore(tmp_path / "objects"), MemoryBus(), make_trust()
    index = IdentityIndex(store, "identity", INDEX_KEY)
    originals = [
        part10(ds) for ds in make_ct_study(5, series=1, per_series=3, nhs_number=NHS).datasets
    ]
    anonymiser = Anonymiser(
        store, bus, K1, {trust.code: trust}, index=index, policies=PolicyBuilder()
    )
    anonymiser.handle(quarantine_batch(store, trust.code, originals))
    return store, index, trust.code, originals


def test_the_index_holds_no_identifier_in_the_clear(tmp_path: Path) -> None:
    store, index, code, originals = _staged(tmp_path)
    keys = list(store.list_keys("identity"))
    assert sorted(layout.parse_identity_entry_key(k).kind for k in keys) == ["patient", "study"]
    import io

    import pydicom

    study_uid = str(pydicom.dcmread(io.BytesIO(originals[0])).StudyInstanceUID)
    for key in keys:
        blob = store.get_bytes("identity", key)
        for secret in (NHS, study_uid, NHS[:6]):
            assert secret not in key and secret.encode() not in blob
    [group_p, group_s] = sorted(index.identities(code), key=lambda g: g[0].kind)
    assert group_p[0].message == f"patient:nhs:{NHS}" and group_s[0].message == study_uid
    # another index key reads nothing; an entry moved under another name does not decrypt
    other = IdentityIndex(store, "identity", RegionalKey(b"x" * 32, "i2"))
    with pytest.raises(PermanentError, match="does not decrypt"):
        list(other.identities(code))
    a, b = keys
    store.put_bytes("identity", a, store.get_bytes("identity", b))
    with pytest.raises(PermanentError):
        index.get(a)


def test_a_changed_key_under_the_same_version_is_refused(tmp_path: Path) -> None:
    store, index, _code, _ = _staged(tmp_path)
    same_version = RegionalKey(b"index-unit-key-TWO-0123456789abc", "k1")
    with pytest.raises(ConfigError, match="SMARTBOX_PSEUDONYM_KEY_VERSION"):
        rotate(index, store, "staging", same_version, PolicyBuilder())
    k2 = RegionalKey(same_version.secret, "k2")
    first = rotate(index, store, "staging", k2, PolicyBuilder())
    again = rotate(index, store, "staging", k2, PolicyBuilder())
    [(code, done)] = first.trusts.items()
    assert done.queued and (done.patients, done.studies) == (1, 1)
    assert not again.trusts[code].queued  # nothing new: the same map, queued once
    assert again.trusts[code].rotation_id == done.rotation_id


def test_rotate_key_without_an_index_key_says_why_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SMARTBOX_PSEUDONYM_KEY", K1.secret.decode())
    for name in ("SMARTBOX_IDENTITY_INDEX_KEY", "SMARTBOX_IDENTITY_INDEX_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    assert cli.main(["rotate-key"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "SMARTBOX_IDENTITY_INDEX_KEY" in line and "split" in line


def test_the_receivers_key_is_its_own_and_survives_a_rotation(tmp_path: Path) -> None:
    spool = tmp_path / "spool" / "RTK"
    first = intake_key.load(spool, lambda: pytest.fail("a new spool adopts nothing"))
    assert stat.S_IMODE(os.stat(spool / intake_key.FILE_NAME).st_mode) == 0o600
    assert first.secret != K1.secret
    rotated = intake_key.load(spool, lambda: RegionalKey(b"n" * 32, "k2"))
    assert instance_key_for(rotated, "RTK", "1.2.3") == instance_key_for(first, "RTK", "1.2.3")
    # a ledger from before this key: the key it ran with is adopted, its ids keep matching
    upgraded = tmp_path / "spool" / "RGT"
    upgraded.mkdir(parents=True)
    (upgraded / intake_key.LEDGER_NAME).write_bytes(b"")
    adopted = intake_key.load(upgraded, lambda: K1)
    assert instance_key_for(adopted, "RGT", "1.2.3") == instance_key_for(K1, "RGT", "1.2.3")
