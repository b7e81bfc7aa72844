"""Key rotation that keeps history linked: a real receiver on loopback, the real anonymiser,
exporter and national ingest (in-process bus, local-directory stores). The key changes mid
stream; the national side links a patient's studies from before and after; a study re-sent
after the rotation is not stored, announced or exported again."""

from __future__ import annotations

import io
import json
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest
from helpers.export import ExportRig
from helpers.receiver_env import LocalReceiver, make_trust, send_files, trust_code
from helpers.util import wait_for

from consumers import national_links
from consumers.anonymiser import Anonymiser
from consumers.deid import PolicyBuilder
from consumers.identity_index import IdentityIndex
from consumers.rotation import rotate
from consumers.withdraw import withdraw
from producers.receiver import intake_key
from smartbox import layout
from smartbox.bus import MemoryBus
from smartbox.keys import RegionalKey
from smartbox.store import LocalStore
from smartbox.synthetic import SyntheticStudy, make_ct_study
from smartbox.topology import Topology

K1 = RegionalKey(b"rotation-test-key-one-0123456789", "k1")
K2 = RegionalKey(b"rotation-test-key-two-0123456789", "k2")
INDEX_KEY = RegionalKey(b"identity-index-test-key-0123456789", "i1")
NHS = "9434765919"  # the patient whose history must stay linked
OTHER_NHS = "4010232137"
ARCHIVE = "archive"


class Box:
    """One trust's box and the national side, driven step by step."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.trust = make_trust(trust_code())
        self.code = self.trust.code
        self.bus = MemoryBus(Topology("rot"))
        self.receiver = self.start_receiver(K1)
        self.store = self.receiver.store
        self.national = LocalStore(root / "national")
        self.rig = ExportRig(self.store, self.national, bus=self.bus)
        self.index = IdentityIndex(self.store, "identity", INDEX_KEY)
        self.sent = 0

    def start_receiver(self, pseudonym_key: RegionalKey) -> LocalReceiver:
        """As ``smartbox receive`` starts it, with ``pseudonym_key`` configured."""
        spool = self.root / "spool" / self.code
        key = intake_key.load(spool, lambda: pseudonym_key)
        return LocalReceiver(self.trust, self.root, bus=self.bus, key=key)

    def restart_receiver(self, pseudonym_key: RegionalKey) -> None:
        self.receiver.close()
        self.receiver = self.start_receiver(pseudonym_key)

    def anonymiser(self, key: RegionalKey) -> Anonymiser:
        return Anonymiser(
            self.store, self.bus, key, {self.code: self.trust}, index=self.index,
            policies=PolicyBuilder(),
        )  # fmt: skip

    def send(self, study: SyntheticStudy, *, new: bool = True) -> None:
        files = study.write(self.root / "outbox" / f"{self.sent:03d}")
        self.sent += 1
        waiting = len(self.receiver.arrived())
        result = send_files(self.receiver.host, self.receiver.port, self.trust.ae_title, files)
        assert result.established and set(result.statuses) == {0}, result
        if new:
            wait_for(lambda: len(self.receiver.arrived()) > waiting, 30, "study.arrived")

    def process(self, anonymiser: Anonymiser) -> list[dict[str, Any]]:
        staged = self.rig.deliver("anonymiser", anonymiser.handle)
        self.rig.deliver("exporter", self.rig.exporter.handle)
        return staged

    def archived_studies(self) -> dict[str, dict[str, Any]]:
        out = {}
        for key in self.national.list_keys(ARCHIVE):
            if layout.is_study_manifest_key(key):
                doc = json.loads(self.national.get_bytes(ARCHIVE, key))
                out[doc["study_uid"]] = doc
        return out

    def first_instance(self, manifest: dict[str, Any]) -> pydicom.Dataset:
        data = self.national.get_bytes(ARCHIVE, manifest["instances"][0]["key"])
        return pydicom.dcmread(io.BytesIO(data))


@pytest.mark.timeout(240)
def test_rotation_mid_stream_keeps_history_linked_and_a_resend_is_not_duplicated(
    tmp_path: Path,
) -> None:
    box = Box(tmp_path)
    before = make_ct_study(11, series=1, per_series=2, nhs_number=NHS)
    box.send(before)
    box.send(make_ct_study(12, series=1, per_series=2, nhs_number=OTHER_NHS))
    box.process(box.anonymiser(K1))
    box.rig.window()
    [(old_uid, old_manifest)] = [
        (u, m) for u, m in box.archived_studies().items() if _has_nhs(box, m, K1, NHS)
    ]
    old_patient = old_manifest["instances"][0]["patient"]

    # the operator configures k2 and runs rotate-key; one anonymiser is still on k1
    report = rotate(box.index, box.store, "staging", K2, PolicyBuilder())
    assert (report.trusts[box.code].patients, report.trusts[box.code].studies) == (2, 2)
    late = make_ct_study(13, series=1, per_series=2, nhs_number="9876543210")
    box.send(late)
    box.process(box.anonymiser(K1))  # staged under k1 after the rotation ran
    after = make_ct_study(14, series=1, per_series=2, nhs_number=NHS)
    box.send(after)
    box.process(box.anonymiser(K2))  # the restarted anonymiser, on k2
    # run again once every anonymiser is on k2: maps what the late one recorded
    again = rotate(box.index, box.store, "staging", K2, PolicyBuilder())
    assert again.trusts[box.code].queued and again.trusts[box.code].patients == 3
    box.rig.window()

    # every rotation map went out in a signed batch and was applied nationally
    receipts = [r["body"] for r in box.rig.receipts]
    applied = [r for b in receipts for r in b.get("rotations", [])]
    assert {r["status"] for r in applied} == {"applied"} and len(applied) == 2
    assert list(box.store.list_keys("staging", layout.rotation_outbox_prefix(box.code))) == []
    for batch in box.rig.batches:
        manifest = json.loads(box.national.get_bytes("national", batch["body"]["manifest_key"]))
        for item in manifest.get("rotations", []):  # listed by sha256 in the signed manifest
            assert item["key"].startswith("_rotations/")

    # the national side links the patient's studies from before and after the rotation
    archived = box.archived_studies()
    assert len(archived) == 4
    new_patient, delta = national_links.resolve(box.national, ARCHIVE, "patient", old_patient)
    assert new_patient != old_patient
    history = national_links.studies_by_patient(box.national, ARCHIVE)
    [after_uid] = [u for u, m in archived.items() if u != old_uid and _has_nhs(box, m, K2, NHS)]
    new_old_uid = national_links.resolve(box.national, ARCHIVE, "study", old_uid)[0]
    assert history[new_patient] == {new_old_uid, after_uid}
    assert len(history) == 3  # three patients, each under its current pseudonym
    # ... on one timeline: the old study's dates plus the delta are its dates under k2
    old_date = _day(box.first_instance(old_manifest).StudyDate)
    under_k2 = _shifted_study_date(before, K2)
    assert old_date + timedelta(days=delta) == under_k2

    # the same study re-sent after the rotation (receiver restarted with k2 configured)
    box.restart_receiver(K2)
    duplicates = box.receiver.metric("smartbox_duplicate_instances_total", kind="identical")
    box.send(before, new=False)  # answered after the ledger lookup: counted by then
    found = box.receiver.metric("smartbox_duplicate_instances_total", kind="identical")
    assert found == duplicates + 2  # both instances found in the ledger, dropped
    box.receiver.close()
    assert box.receiver.arrived() == []
    box.process(box.anonymiser(K2))
    box.rig.window()
    assert len(box.archived_studies()) == 4  # not stored, announced or exported again


def test_a_withdrawal_follows_the_patient_through_a_rotation(tmp_path: Path) -> None:
    box = Box(tmp_path)
    box.send(make_ct_study(21, series=1, per_series=2, nhs_number=NHS))
    box.process(box.anonymiser(K1))
    box.rig.window()
    old_patient = next(iter(box.archived_studies().values()))["instances"][0]["patient"]
    withdraw(box.store, "staging", box.code, old_patient)
    report = rotate(box.index, box.store, "staging", K2, PolicyBuilder())
    assert report.trusts[box.code].withdrawals_carried == 1
    box.send(make_ct_study(22, series=1, per_series=2, nhs_number=NHS))
    box.rig.deliver("anonymiser", box.anonymiser(K2).handle)
    [(message, _headers)] = box.bus.messages(box.bus.topology.queue("exporter"))
    assert message["body"]["held_back_reasons"] == {"withdrawn": 2}


@pytest.mark.timeout(240)
def test_patient_links_by_the_old_or_the_new_pseudonym_give_both_keys_records(
    tmp_path: Path,
) -> None:
    """A patient with a study and a clinical record under k1, then (after rotate-key) another
    of each under k2: looked up nationally by either pseudonym, both studies and both records,
    each with the pseudonym it is archived under."""
    from helpers.clinical import identified, write_csv

    from consumers.clinical.national import patient_links
    from consumers.clinical.stage import ClinicalStage
    from consumers.clinical.submit import prepare, publish

    box = Box(tmp_path)
    stage = ClinicalStage(box.store)

    def submit(key: RegionalKey, name: str, **fields: str) -> str:
        path = write_csv(tmp_path / f"{name}.csv", [identified(NHS, **fields)])
        sub = prepare(path, box.trust, key, PolicyBuilder(), date(2026, 12, 1))
        publish(box.bus, box.code, sub)
        box.rig.deliver("clinical", stage.handle)
        return str(sub.records[0].record["record_id"])

    box.send(make_ct_study(41, series=1, per_series=2, nhs_number=NHS))
    box.process(box.anonymiser(K1))
    old_record = submit(K1, "before")
    box.rig.window()
    [(old_uid, old_manifest)] = box.archived_studies().items()
    old_patient = old_manifest["instances"][0]["patient"]
    assert patient_links(box.national, ARCHIVE, old_patient)["clinical"].keys() == {old_record}

    rotate(box.index, box.store, "staging", K2, PolicyBuilder())
    box.send(make_ct_study(42, series=1, per_series=2, nhs_number=NHS))
    box.process(box.anonymiser(K2))
    new_record = submit(K2, "after", swab_2_date="2020-04-09", swab_2_result="negative")
    box.rig.window()
    [(new_uid, new_manifest)] = [(u, m) for u, m in box.archived_studies().items() if u != old_uid]
    new_patient = new_manifest["instances"][0]["patient"]
    assert new_patient != old_patient
    assert national_links.resolve(box.national, ARCHIVE, "patient", old_patient)[0] == new_patient

    by_old = patient_links(box.national, ARCHIVE, old_patient)
    by_new = patient_links(box.national, ARCHIVE, new_patient)
    assert by_old == by_new
    assert by_new["patient"] == new_patient
    assert by_new["pseudonyms"] == [new_patient, old_patient]
    assert by_new["studies"] == sorted([old_uid, new_uid])
    assert by_new["by_pseudonym"] == {
        old_patient: {"studies": [old_uid], "clinical": [old_record]},
        new_patient: {"studies": [new_uid], "clinical": [new_record]},
    }
    records = by_new["clinical"]
    assert records.keys() == {old_record, new_record}
    assert records[old_record]["patient"] == old_patient  # each says whose it is
    assert records[new_record]["patient"] == new_patient
    # another patient's pseudonym is not pulled in
    box.send(make_ct_study(43, series=1, per_series=2, nhs_number=OTHER_NHS))
    box.process(box.anonymiser(K2))
    box.rig.window()
    assert patient_links(box.national, ARCHIVE, new_patient) == by_new


def test_a_tampered_rotation_map_is_rejected_and_sent_again(tmp_path: Path) -> None:
    box = Box(tmp_path)
    box.send(make_ct_study(31, series=1, per_series=2, nhs_number=NHS))
    box.process(box.anonymiser(K1))
    box.rig.window()
    rotate(box.index, box.store, "staging", K2, PolicyBuilder())

    def tamper(national: LocalStore) -> None:
        for key in national.list_keys("national", "_rotations/"):
            doc = json.loads(national.get_bytes("national", key))
            doc["patients"][0]["to"] = "0" * 32  # someone else's history
            national.put_bytes("national", key, json.dumps(doc).encode())

    box.rig.window(tamper=tamper)
    [receipt] = box.rig.receipts[-1:]
    [entry] = receipt["body"]["rotations"]
    assert (entry["status"], entry["reason"]) == ("rejected", "checksum_mismatch")
    assert list(box.national.list_keys(ARCHIVE, "_ingest/links/")) == []
    # still in the outbox: it goes again once the receipt timeout passes
    assert len(list(box.store.list_keys("staging", layout.rotation_outbox_prefix(box.code)))) == 1


def _has_nhs(box: Box, manifest: dict[str, Any], key: RegionalKey, nhs: str) -> bool:
    from consumers.deid.pseudonyms import Pseudonymiser

    expected = Pseudonymiser(key, box.code, 365).patient(nhs, None)[0]
    return bool(manifest["instances"][0]["patient"] == expected)


def _day(value: str) -> date:
    return date(int(value[:4]), int(value[4:6]), int(value[6:8]))


def _shifted_study_date(study: SyntheticStudy, key: RegionalKey) -> date:
    from consumers.deid.pseudonyms import Pseudonymiser

    ds = study.datasets[0]
    pseudo = Pseudonymiser(key, "X", 365)
    shift = pseudo.date_shift_days(pseudo.patient(str(ds.PatientID), None)[0])
    return _day(str(ds.StudyDate)) + timedelta(days=shift)
