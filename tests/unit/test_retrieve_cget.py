"""Cohort retrieval by C-GET and on the trust's NHS-number attribute, without an archive: the
``[retrieve]`` table's C-GET rules, the forwarder's answers to the archive (against a real
pynetdicom storage SCP on loopback standing in for the receiver), and what a cohort row is
queried on and pseudonymised as."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from consumers.deid.pseudonyms import Pseudonymiser
from consumers.withdraw_resolve import resolve_patient
from producers.retrieve.config import ReceiverTarget, parse
from producers.retrieve.forward import OUT_OF_RESOURCES, Forwarder
from producers.retrieve.rows import CohortRow, query_key, row_pseudonym
from smartbox.errors import ConfigError
from smartbox.keys import RegionalKey
from smartbox.synthetic import make_nhs_number
from smartbox.trusts import load_trust

NHS = make_nhs_number(random.Random(3))
TRUST = """
code = "RTK"
name = "Test"
ae_title = "SMARTBOX_RTK"
port = 11112
allowed_callers = ["SMARTBOX_QR"]
"""
GET_ARCHIVE = """
[retrieve]
[[retrieve.archives]]
ae_title = "RTK_PACS"
host = "10.0.0.5"
port = 104
method = "C-GET"
"""


def _trust(tmp_path: Path, text: str):  # noqa: ANN202
    (tmp_path / "RTK.toml").write_text(text)
    return load_trust(tmp_path, "RTK")


def _error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse(_trust(tmp_path, text))
    message = str(info.value)
    assert message.startswith(str(tmp_path / "RTK.toml")) and "\n" not in message
    return message


# --- the [retrieve] table -------------------------------------------------------------------
def test_c_get_is_accepted_and_the_archive_need_not_call_the_receiver(tmp_path: Path) -> None:
    config = parse(_trust(tmp_path, TRUST + GET_ARCHIVE))
    assert config is not None
    assert config.archives[0].method == "C-GET"
    # the receiver on this host (its bind_host is a wildcard), as the trust file names it
    assert config.receiver == ReceiverTarget("SMARTBOX_RTK", "127.0.0.1", 11112)


def test_the_receiver_host_is_the_bind_host_or_receiver_host(tmp_path: Path) -> None:
    text = TRUST + 'bind_host = "10.9.9.9"\n' + GET_ARCHIVE
    config = parse(_trust(tmp_path, text))
    assert config is not None and config.receiver.host == "10.9.9.9"
    text = text.replace("[retrieve]\n", '[retrieve]\nreceiver_host = "rx.local"\n')
    config = parse(_trust(tmp_path, text))
    assert config is not None and config.receiver.host == "rx.local"
    message = _error(tmp_path, text.replace('"rx.local"', "104"))
    assert "'retrieve.receiver_host'" in message


def test_with_c_get_the_calling_ae_must_be_an_allowed_caller(tmp_path: Path) -> None:
    text = (TRUST + GET_ARCHIVE).replace('["SMARTBOX_QR"]', '["RTK_PACS"]')
    message = _error(tmp_path, text)
    assert "'retrieve.calling_ae'" in message and "add 'SMARTBOX_QR' to allowed_callers" in message
    # with C-MOVE it is the archive that calls the receiver, not us
    assert parse(_trust(tmp_path, text.replace('"C-GET"', '"C-MOVE"'))) is not None


def test_with_c_get_the_receiver_must_let_loopback_in(tmp_path: Path) -> None:
    text = TRUST + 'allowed_networks = ["10.20.0.0/16"]\n' + GET_ARCHIVE
    message = _error(tmp_path, text)
    assert "'retrieve.receiver_host'" in message and "127.0.0.1/32" in message
    fixed = text.replace('"10.20.0.0/16"', '"10.20.0.0/16", "127.0.0.1/32"')
    assert parse(_trust(tmp_path, fixed)) is not None


@pytest.mark.parametrize(
    ("drop", "key"),
    [
        ('host = "10.0.0.5"\n', "retrieve.archives[0].host"),
        ("port = 104\n", "retrieve.archives[0].port"),
        ('ae_title = "RTK_PACS"\n', "retrieve.archives[0].ae_title"),
    ],
)
def test_c_get_needs_the_archive_s_address(tmp_path: Path, drop: str, key: str) -> None:
    assert f"'{key}'" in _error(tmp_path, TRUST + GET_ARCHIVE.replace(drop, ""))


def test_c_get_to_a_tls_receiver_is_refused_in_one_line(tmp_path: Path) -> None:
    for name in ("cert.pem", "key.pem"):
        (tmp_path / name).write_text("x")
    tls = f'[tls]\ncert_file = "{tmp_path / "cert.pem"}"\nkey_file = "{tmp_path / "key.pem"}"\n'
    message = _error(tmp_path, TRUST + GET_ARCHIVE + tls)
    assert "'retrieve.archives'" in message and "TLS" in message


# --- the forwarder --------------------------------------------------------------------------
@pytest.fixture
def receiver() -> Iterator[SimpleNamespace]:
    """A storage SCP on loopback answering with ``answer.status`` and keeping what it got."""
    got: list[tuple[str, int, bytes]] = []
    answer = SimpleNamespace(status=0x0000, got=got, port=0)

    def store(event):  # noqa: ANN001, ANN202
        got.append(
            (
                event.request.MoveOriginatorApplicationEntityTitle,
                event.request.MoveOriginatorMessageID,
                event.encoded_dataset(include_meta=False),
            )
        )
        return answer.status

    ae = AE(ae_title="SMARTBOX_RTK")
    ae.add_supported_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_supported_context(Verification)
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, store)])
    answer.port = server.server_address[1]
    try:
        yield answer
    finally:
        server.shutdown()


def _event(dataset_bytes: bytes, sop_uid: str) -> SimpleNamespace:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import read_dataset

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = read_dataset(DicomBytesIO(dataset_bytes), False, True)
    return SimpleNamespace(dataset=ds, file_meta=meta, request=SimpleNamespace(MessageID=7))


def _ct_bytes() -> tuple[bytes, str]:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.PatientID = "X"
    ds.Rows = ds.Columns = 2
    ds.BitsAllocated = ds.BitsStored = 16
    ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
    ds.PixelData = b"\x00\x01" * 4
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    write_dataset(out, ds)
    return out.getvalue(), ds.SOPInstanceUID


def _forwarder(port: int) -> Forwarder:
    fwd = Forwarder(ReceiverTarget("SMARTBOX_RTK", "127.0.0.1", port), "SMARTBOX_QR", 10)
    fwd.originator_id = 3
    assert fwd.open([build_context(CTImageStorage, [ExplicitVRLittleEndian])])
    return fwd


def test_an_instance_is_passed_on_unchanged_with_our_move_originator(receiver) -> None:  # noqa: ANN001
    data, sop_uid = _ct_bytes()
    fwd = _forwarder(receiver.port)
    try:
        assert fwd.handle_store(_event(data, sop_uid)) == 0x0000
    finally:
        fwd.close()
    assert receiver.got == [("SMARTBOX_QR", 3, data)]
    assert (fwd.forwarded, fwd.failed) == (1, 0)


@pytest.mark.parametrize(
    ("receiver_says", "archive_hears"),
    [(0xA700, 0xA700), (0xC210, 0xC210), (0xB000, OUT_OF_RESOURCES)],
)
def test_the_archive_hears_success_only_if_the_receiver_said_success(
    receiver,
    receiver_says: int,
    archive_hears: int,  # noqa: ANN001
) -> None:
    receiver.status = receiver_says
    data, sop_uid = _ct_bytes()
    fwd = _forwarder(receiver.port)
    try:
        assert fwd.handle_store(_event(data, sop_uid)) == archive_hears
    finally:
        fwd.close()
    assert fwd.failed == 1


def test_no_receiver_no_success(receiver) -> None:  # noqa: ANN001
    port = receiver.port
    fwd = _forwarder(port)
    fwd.close()  # the receiver association gone
    data, sop_uid = _ct_bytes()
    assert fwd.handle_store(_event(data, sop_uid)) == OUT_OF_RESOURCES
    nobody = Forwarder(ReceiverTarget("X", "127.0.0.1", 1), "SMARTBOX_QR", 2)
    assert not nobody.echo()  # the C-GET is not even asked for
    assert not nobody.open([build_context(CTImageStorage, [ExplicitVRLittleEndian])])
    assert Forwarder(ReceiverTarget("SMARTBOX_RTK", "127.0.0.1", port), "QR", 2).echo()


# --- what a row is queried on and pseudonymised as -----------------------------------------
def _row(nhs: str | None, local: str | None) -> CohortRow:
    from datetime import date

    return CohortRow(2, nhs, local, date(2020, 1, 1), date(2020, 12, 31))


def test_an_nhs_number_is_queried_in_the_trust_s_attribute_a_local_id_in_patient_id() -> None:
    assert _row(NHS, None).query("OtherPatientIDs") == ("OtherPatientIDs", NHS)
    assert _row(NHS, None).query() == ("PatientID", NHS)
    assert _row(None, "H1").query("OtherPatientIDs") == ("PatientID", "H1")
    assert query_key("OtherPatientIDs", None, "H1") == ("PatientID", "H1")


@pytest.mark.parametrize("attribute", ["PatientID", "OtherPatientIDs"])
def test_a_row_s_pseudonym_is_its_images_and_its_withdrawal_s(
    tmp_path: Path, attribute: str
) -> None:
    key = RegionalKey(b"k" * 32, "pseudonym")
    names = Pseudonymiser(key, "RTK", 1)
    trust = _trust(tmp_path, TRUST + f'nhs_number_attribute = "{attribute}"\n')
    # the images as the de-identifier reads them: (nhs attribute, PatientID)
    image_nhs = names.patient(NHS, "H9")[0]
    assert row_pseudonym(names, attribute, _row(NHS, None)) == image_nhs
    for local in ("H9", NHS):  # a local ID that happens to look like an NHS number
        in_images = local if attribute == "PatientID" else None
        image = names.patient(in_images, local)[0]
        assert row_pseudonym(names, attribute, _row(None, local)) == image
        assert resolve_patient(None, "", trust, key, patient_id=local) == [image]  # type: ignore[arg-type]


# --- each archive inside its own window -----------------------------------------------------
TWO_ARCHIVES = """
[retrieve]
[[retrieve.archives]]
name = "day"
ae_title = "RTK_DAY"
host = "10.0.0.5"
port = 104
window_start = "0 8 * * *"
window_hours = 4
timezone = "UTC"

[[retrieve.archives]]
name = "night"
ae_title = "RTK_NIGHT"
host = "10.0.0.6"
port = 104
window_start = "0 20 * * *"
window_hours = 4
timezone = "UTC"
"""


class _FakeArchive:
    """An archive that answers at once, recording what it was asked."""

    def __init__(self, name: str, calls: list[tuple[str, str]]) -> None:
        self.name = name
        self.calls = calls

    def find_studies(self, attribute: str, value: str, start, end):  # noqa: ANN001, ANN201
        from producers.retrieve.scu import FoundStudy

        self.calls.append((self.name, "find"))
        return [FoundStudy(f"1.2.{len(self.name)}", ("CT",), "CT CHEST", 6)]

    def retrieve(self, destination: str, study_uid: str, sop_uids=None):  # noqa: ANN001, ANN201
        from producers.retrieve.scu import MoveResult

        self.calls.append((self.name, "retrieve"))
        return MoveResult(6, 0, 0, 0x0000)


class _NothingHeld:
    def study_instances(self, study_uid: str) -> int:
        return 0


def test_each_archive_is_asked_only_inside_its_own_window(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from producers.retrieve.runner import CohortRunner
    from producers.retrieve.state import CohortState

    text = TRUST.replace('["SMARTBOX_QR"]', '["RTK_DAY", "RTK_NIGHT"]') + TWO_ARCHIVES
    config = parse(_trust(tmp_path, text))
    assert config is not None
    state = CohortState(tmp_path / "state.sqlite3")
    state.add_cohort("RTK", "test", [_row(NHS, None)], ["PSEUDONYM"], 0)
    now = [0.0]

    def at(day: int, hour: int) -> float:
        return datetime(2026, 12, day, hour, tzinfo=UTC).timestamp()

    runner = CohortRunner(
        config, state, _NothingHeld(), lambda uid: "S" + uid, clock=lambda: now[0]
    )  # type: ignore[arg-type]
    calls: list[tuple[str, str]] = []
    for name, peer in runner.peers.items():
        peer.client = _FakeArchive(name, calls)  # type: ignore[assignment]
    try:
        now[0] = at(1, 9)  # the day archive's window only
        assert runner.open_archives() == {"day"}
        (patient,) = state.due_patients(now[0])
        runner.query(patient)
        assert calls == [("day", "find")]
        assert state.due_patients(now[0]) == []  # waits for the night archive's window
        assert state.patient_counts(patient.cohort_id) == {"pending": 1}
        (day_study,) = state.due_studies(now[0], archives=runner.open_archives())
        runner.retrieve(day_study)
        assert calls[-1] == ("day", "retrieve")

        now[0] = at(1, 21)  # the night archive's window only
        assert runner.open_archives() == {"night"}
        (patient,) = state.due_patients(now[0])
        assert patient.archives_queried == ("day",)
        runner.query(patient)
        assert calls[-1] == ("night", "find")
        assert state.patient_counts(patient.cohort_id) == {"queried": 1}
        assert state.due_studies(now[0], archives={"day"}) == []
        (night_study,) = state.due_studies(now[0])

        now[0] = at(2, 9)  # the next morning: the night archive's study waits for the night
        calls.clear()
        runner.retrieve(night_study)
        assert calls == []
        assert state.due_studies(now[0]) == []
        assert state.due_studies(at(2, 20)) != []
        now[0] = at(2, 20)
        (night_study,) = state.due_studies(now[0], archives=runner.open_archives())
        runner.retrieve(night_study)
        assert calls == [("night", "retrieve")]
        assert runner.window_open()
        now[0] = at(2, 15)
        assert not runner.window_open()
    finally:
        state.close()


def test_a_cohort_database_from_before_per_archive_windows_is_upgraded(tmp_path: Path) -> None:
    import sqlite3

    from producers.retrieve.state import SCHEMA, CohortState

    path = tmp_path / "old.sqlite3"
    old = sqlite3.connect(path)
    before = SCHEMA.replace(",\n    archives_queried TEXT NOT NULL DEFAULT ''", "")
    assert "archives_queried" not in before
    old.executescript(before)
    old.execute(
        "INSERT INTO patients (cohort_id, row, nhs_number, pseudonym, date_from, date_to,"
        " modalities, body_parts) VALUES ('C1', 2, ?, 'P', '2020-01-01', '2020-12-31', '', '')",
        (NHS,),
    )
    old.commit()
    old.close()
    state = CohortState(path)
    try:
        (patient,) = state.due_patients(0)
        assert patient.archives_queried == () and patient.by_nhs
    finally:
        state.close()
