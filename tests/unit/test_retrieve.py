"""Cohort retrieval without servers: cohort rows, the token bucket, the off-peak window, the
``[retrieve]`` table, the study filters, the receiver's Move Originator and the cohort
commands' operator mistakes."""

from __future__ import annotations

import random
import struct
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from consumers.export_policy import classify
from producers.receiver.dimse import decode_command
from producers.retrieve.config import Filters, parse
from producers.retrieve.limits import TokenBucket
from producers.retrieve.matching import decide, rules_for
from producers.retrieve.rows import parse_text
from producers.retrieve.scu import FoundStudy
from producers.retrieve.state import CohortState
from producers.retrieve.window import Window
from smartbox.app import cli
from smartbox.errors import ConfigError
from smartbox.synthetic import make_nhs_number
from smartbox.trusts import load_trust

NHS = make_nhs_number(random.Random(1))
BAD_NHS = NHS[:9] + str((int(NHS[9]) + 1) % 10)


# --- cohort rows ------------------------------------------------------------------------------
def test_valid_rows_and_every_bad_field_reported_by_row_without_values() -> None:
    text = (
        "NHS_Number,patient_id,date_from,date_to,modalities,body_parts\n"
        f"{NHS},,2020-01-01,2020-12-31,,\n"  # row 2: good
        f"{BAD_NHS},,2020-01-01,2020-12-31,,\n"  # row 3: check digit
        ",,2020-01-01,2020-12-31,,\n"  # row 4: no identifier
        ",LOCAL-1,2020-13-01,20200101,,\n"  # row 5: bad date
        ",LOCAL-2,2020-06-01,2020-01-01,,\n"  # row 6: window backwards
        ",LOCAL-3,20200101,20200201,CT;c-r,chest\n"  # row 7: bad modality
        "\n"
        ",LOCAL*4,20200101,20200201,CT;MR,chest thorax\n"  # row 9: wildcard in the ID
        ",LOCAL-5,20200101,20200201,CT MR,Chest\n"  # row 10: good
    )
    parsed = parse_text("cohort.csv", text)
    assert [r.row for r in parsed.rows] == [2, 10]
    assert parsed.rows[0].nhs_number == NHS and parsed.rows[0].patient_id is None
    assert parsed.rows[1].modalities == ("CT", "MR") and parsed.rows[1].body_parts == ("CHEST",)
    got = {(e.row, e.field) for e in parsed.errors}
    assert got == {
        (3, "nhs_number"),
        (4, "nhs_number"),
        (5, "date_from"),
        (6, "date_to"),
        (7, "modalities"),
        (9, "patient_id"),
    }
    messages = "\n".join(str(e) for e in parsed.errors)
    assert "cohort.csv: row 3: field 'nhs_number'" in messages
    assert "row 5: field 'date_from': not a real date" in messages  # given, but 2020-13-01
    assert "2020-13-01" not in messages
    assert BAD_NHS not in messages and "LOCAL*4" not in messages
    assert NHS not in repr(parsed.rows)


def test_nhs_number_with_spaces_is_the_same_patient() -> None:
    spaced = f"{NHS[:3]} {NHS[3:6]} {NHS[6:]}"
    parsed = parse_text("c.csv", f"nhs_number,date_from,date_to\n{spaced},2020-01-01,2020-02-01\n")
    assert parsed.rows[0].nhs_number == NHS and not parsed.errors


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "empty"),
        ("nhs,date_from,date_to\n", "unknown column 'nhs'"),
        ("modalities,date_from,date_to\n", "nhs_number or patient_id"),
        ("nhs_number,date_from\n", "date_to"),
    ],
)
def test_unusable_files_are_one_error(text: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        parse_text("c.csv", text)


def test_extra_cells_are_a_row_error() -> None:
    parsed = parse_text("c.csv", f"nhs_number,date_from,date_to\n{NHS},20200101,20200102,x\n")
    assert not parsed.rows and [(e.row, e.field) for e in parsed.errors] == [(2, "-")]


# --- token bucket -----------------------------------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_bucket_allows_burst_then_rate_and_never_more() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=5, capacity=10, clock=clock, sleep=clock.sleep)
    assert bucket.take(10) is False  # the burst, no wait
    assert clock.now == 0
    assert bucket.take(5) is True  # then the rate: 5 tokens take a second
    assert clock.now == pytest.approx(1.0)
    taken = 15
    for _ in range(100):
        bucket.take(3)
        taken += 3
        assert taken <= 10 + 5 * clock.now + 1e-6  # capacity + rate * elapsed


def test_a_request_above_capacity_waits_for_a_full_bucket_and_leaves_debt() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=2, capacity=4, clock=clock, sleep=clock.sleep)
    bucket.take(4)
    bucket.take(10)  # waits for a full bucket (2 s), then owes 6
    assert clock.now == pytest.approx(2.0)
    bucket.take(1)  # the debt (6) plus one token: 3.5 s more
    assert clock.now == pytest.approx(5.5)


def test_adjust_gives_back_and_takes_more() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=1, capacity=10, clock=clock, sleep=clock.sleep)
    bucket.take(10)
    bucket.adjust(-4)  # the study had fewer instances than expected
    assert bucket.delay(4) == 0
    bucket.adjust(8)  # ... or more
    assert bucket.delay(1) == pytest.approx(5.0)


# --- window -------------------------------------------------------------------------------
def test_window_across_midnight_in_london_time() -> None:
    w = Window("0 19 * * *", 11, "Europe/London")  # 19:00 to 06:00
    assert w.is_open(datetime(2026, 1, 10, 19, 0, tzinfo=UTC))  # GMT: 19:00 local
    assert w.is_open(datetime(2026, 1, 11, 5, 59, tzinfo=UTC))
    assert not w.is_open(datetime(2026, 1, 11, 6, 0, tzinfo=UTC))
    assert not w.is_open(datetime(2026, 1, 11, 12, 0, tzinfo=UTC))
    # BST: 19:00 local is 18:00 UTC
    assert w.is_open(datetime(2026, 7, 1, 18, 30, tzinfo=UTC))
    assert not w.is_open(datetime(2026, 7, 1, 17, 30, tzinfo=UTC))
    nxt = w.next_open(datetime(2026, 7, 1, 12, 0, tzinfo=UTC))
    assert nxt.astimezone(UTC) == datetime(2026, 7, 1, 18, 0, tzinfo=UTC)
    assert w.closes_at(datetime(2026, 7, 1, 12, 0, tzinfo=UTC)) is None


def test_weekend_only_window() -> None:
    w = Window("0 8 * * sat", 36, "UTC")  # Saturday 08:00 to Sunday 20:00
    assert w.is_open(datetime(2026, 12, 6, 19, 0, tzinfo=UTC))  # a Sunday
    assert not w.is_open(datetime(2026, 12, 6, 20, 0, tzinfo=UTC))
    assert not w.is_open(datetime(2026, 12, 2, 12, 0, tzinfo=UTC))  # a Wednesday


# --- the [retrieve] table -------------------------------------------------------------------
TRUST = """
code = "RTK"
name = "Test"
ae_title = "SMARTBOX_RTK"
port = 11112
allowed_callers = ["RTK_PACS"]
"""
ARCHIVE = """
[retrieve]
[[retrieve.archives]]
ae_title = "RTK_PACS"
host = "10.0.0.5"
port = 104
"""


def _trust(tmp_path: Path, extra: str):  # noqa: ANN202
    (tmp_path / "RTK.toml").write_text(TRUST + extra)
    return load_trust(tmp_path, "RTK")


def test_defaults_off_peak_gentle_chest(tmp_path: Path) -> None:
    config = parse(_trust(tmp_path, ARCHIVE))
    assert config is not None
    (archive,) = config.archives
    assert (archive.method, archive.window_start, archive.timezone) == (
        "C-MOVE",
        "0 19 * * *",
        "Europe/London",
    )
    assert config.move_destination == "SMARTBOX_RTK"
    assert config.filters.modalities == ("CR", "DX", "CT", "MR")
    assert parse(_trust(tmp_path, "")) is None


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ('port = 104\nmethod = "C-STORE"', "retrieve.archives[0].method"),
        ('port = 104\nwindow_start = "every night"', "retrieve.archives[0].window_start"),
        ('port = 104\ntimezone = "Mars/Olympus"', "retrieve.archives[0].timezone"),
        ("port = 104\ninstances_per_second = 0", "retrieve.archives[0].instances_per_second"),
        ("port = 104\nmax_associations = 0", "retrieve.archives[0].max_associations"),
        ("port = 104\nwindw_hours = 3", "retrieve.archives[0].windw_hours"),
        ("port = 0", "retrieve.archives[0].port"),
    ],
)
def test_bad_retrieve_values_name_file_and_key(tmp_path: Path, change: str, key: str) -> None:
    trust = _trust(tmp_path, ARCHIVE.replace("port = 104", change))
    with pytest.raises(ConfigError) as info:
        parse(trust)
    message = str(info.value)
    assert message.startswith(str(tmp_path / "RTK.toml")) and f"'{key}'" in message
    assert "\n" not in message


def test_the_archive_must_be_an_allowed_caller(tmp_path: Path) -> None:
    trust = _trust(tmp_path, ARCHIVE.replace('ae_title = "RTK_PACS"', 'ae_title = "OTHER"'))
    with pytest.raises(ConfigError, match="add 'OTHER' to allowed_callers"):
        parse(trust)


# --- filters --------------------------------------------------------------------------------
def _series(*pairs: tuple[str, str]):  # noqa: ANN202
    out = []
    for modality, part in pairs:
        ds = Dataset()
        ds.Modality, ds.BodyPartExamined = modality, part
        out.append(ds)
    return lambda: out


def _never():  # noqa: ANN202
    raise AssertionError("no SERIES query was needed")


@pytest.mark.parametrize(
    ("modalities", "description", "series", "expected"),
    [
        (("CT",), "CT CHEST", _never, (True, None)),
        (("CR",), "CXR", _never, (True, None)),
        (("CT",), "CT HEAD", _never, (False, "description_excluded")),
        (("US",), "US CHEST", _never, (False, "modality")),
        (("CT",), "CT", _series(("CT", "CHEST")), (True, None)),
        (("CT",), "CT", _series(("CT", "ABDOMEN")), (False, "body_part")),
        ((), "", _series(("US", "CHEST")), (False, "modality")),
        ((), "", _series(("MR", "THORAX")), (True, None)),
    ],
)
def test_default_filters_chest_cr_dx_ct_mr(modalities, description, series, expected) -> None:  # noqa: ANN001
    rules = rules_for(Filters(), (), ())
    study = FoundStudy("1.2.3", modalities, description, 6)
    assert decide(study, rules, series) == expected


def test_a_row_s_own_filters_replace_the_defaults() -> None:
    rules = rules_for(Filters(), ("CT",), ("HEAD",))
    assert decide(FoundStudy("1", ("CT",), "CT HEAD", 1), rules, _never) == (True, None)
    assert decide(FoundStudy("1", ("MR",), "MR HEAD", 1), rules, _never) == (False, "modality")


# --- the receiver tells a retrieved instance from a pushed one --------------------------------
def _command(move_originator: bytes | None) -> bytes:
    def el(element: int, value: bytes) -> bytes:
        return struct.pack("<HHI", 0, element, len(value)) + value

    body = el(0x0002, b"1.2.840.10008.5.1.4.1.1.2\x00") + el(0x0100, struct.pack("<H", 1))
    body += el(0x0110, struct.pack("<H", 7)) + el(0x0800, struct.pack("<H", 0))
    body += el(0x1000, b"1.2.3.4\x00")
    if move_originator is not None:
        body += el(0x1030, move_originator)
    return body


def test_move_originator_is_decoded_and_makes_a_study_backfill() -> None:
    assert decode_command(_command(b"SMARTBOX_QR ")).move_originator == "SMARTBOX_QR"
    assert decode_command(_command(None)).move_originator == ""
    assert decode_command(_command(b"BAD\\AE")).move_originator == ""
    assert classify(None, {"origin": "retrieved"}) == "prospective"  # no trust: unknown


def test_classify_retrieved_as_backfill(tmp_path: Path) -> None:
    trust = _trust(tmp_path, "")
    assert classify(trust, {"origin": "retrieved"}) == "backfill"
    assert classify(trust, {"origin": "pushed"}) == "prospective"


# --- state ------------------------------------------------------------------------------------
def test_state_survives_reopening(tmp_path: Path) -> None:
    rows = parse_text("c.csv", f"nhs_number,date_from,date_to\n{NHS},20200101,20200102\n").rows
    state = CohortState(tmp_path / "s.sqlite3")
    cohort_id = state.add_cohort("RTK", "c.csv", rows, ["P" * 32], 0)
    state.close()
    state = CohortState(tmp_path / "s.sqlite3")
    assert state.patient_counts(cohort_id) == {"pending": 1}
    assert state.active_cohorts() == 1
    assert (tmp_path / "s.sqlite3").stat().st_mode & 0o077 == 0  # identifiable: owner only


# --- operator mistakes: one line, exit 2 ---------------------------------------------------------
def test_cohort_commands_operator_mistakes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SMARTBOX_TRUSTS_DIR", str(tmp_path))
    monkeypatch.setenv("SMARTBOX_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("SMARTBOX_PSEUDONYM_KEY", "k" * 40)
    (tmp_path / "RTK.toml").write_text(TRUST)
    csv = tmp_path / "c.csv"
    csv.write_text(f"nhs_number,date_from,date_to\n{NHS},2020-01-01,2020-02-01\n")
    assert cli.main(["cohort", "submit", "--trust", "RTK", str(csv)]) == 2
    assert "no [retrieve] table" in capsys.readouterr().err
    (tmp_path / "RTK.toml").write_text(TRUST + ARCHIVE)
    csv.write_text(
        f"nhs_number,date_from,date_to\n{NHS},2020-01-01,2020-02-01\n{BAD_NHS},2020-01-01,x\n"
    )
    assert cli.main(["cohort", "submit", "--trust", "RTK", str(csv)]) == 2
    err = capsys.readouterr().err
    assert "row 3: field 'nhs_number'" in err and "row 3: field 'date_to'" in err
    assert "nothing stored" in err and BAD_NHS not in err and "Traceback" not in err
    assert not (tmp_path / "state" / "retrieve" / "RTK.sqlite3").exists()
    assert cli.main(["cohort", "submit", "--trust", "RTK", str(csv), "--accept-valid"]) == 0
    out = capsys.readouterr()
    cohort_id = out.out.split()[0]
    assert "1 bad row(s) not stored" in out.err
    assert cli.main(["cohort", "status", "--trust", "RTK", cohort_id]) == 0
    assert "pending 1" in capsys.readouterr().out
    assert cli.main(["cohort", "status", "--trust", "RTK", "C000000000000"]) == 2
    assert "no cohort C000000000000" in capsys.readouterr().err


# --- the window is obeyed: nothing reaches the archive outside it ------------------------------
def _listener():  # noqa: ANN202
    import socket
    import threading

    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    accepted: list[int] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            accepted.append(1)
            conn.close()

    threading.Thread(target=accept, daemon=True).start()
    return server, accepted, stop


@pytest.mark.parametrize("ignore_window", [False, True])
def test_outside_the_window_not_even_a_connection(tmp_path: Path, ignore_window: bool) -> None:
    import threading
    import time

    from producers.retrieve.received import ReceiverLedger
    from producers.retrieve.runner import CohortRunner

    server, accepted, stop_listener = _listener()
    port = server.getsockname()[1]
    table = ARCHIVE.replace("port = 104", f"port = {port}\nnetwork_timeout_seconds = 1")
    table = table.replace('host = "10.0.0.5"', 'host = "127.0.0.1"')
    table = table.replace("[retrieve]\n", "[retrieve]\nretry_initial_seconds = 30\n", 1)
    config = parse(_trust(tmp_path, table))
    assert config is not None
    state = CohortState(tmp_path / "s.sqlite3")
    rows = parse_text("c.csv", f"nhs_number,date_from,date_to\n{NHS},20200101,20200102\n").rows
    state.add_cohort("RTK", "c.csv", rows, ["P" * 32], 0)
    noon = datetime(2026, 12, 2, 12, 0, tzinfo=UTC).timestamp()  # 19:00-06:00: closed
    runner = CohortRunner(
        config,
        state,
        ReceiverLedger(tmp_path / "spool", "RTK"),
        lambda uid: uid,
        ignore_window=ignore_window,
        clock=lambda: noon,
    )
    for peer in runner.peers.values():
        peer.client.connect_retry_seconds = 0.1
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,), kwargs={"poll": 0.05})
    thread.start()
    try:
        deadline = time.monotonic() + 3
        while ignore_window and not accepted and time.monotonic() < deadline:
            time.sleep(0.05)
        if not ignore_window:
            time.sleep(1.0)
    finally:
        stop.set()
        thread.join(30)
        stop_listener.set()
        server.close()
    assert bool(accepted) is ignore_window
    if not ignore_window:
        assert state.patient_counts(state.cohorts()[0]) == {"pending": 1}


def test_check_config_reports_a_bad_retrieve_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SMARTBOX_TRUSTS_DIR", str(tmp_path))
    monkeypatch.setenv("SMARTBOX_PSEUDONYM_KEY", "k" * 40)
    bad = ARCHIVE.replace("port = 104", "port = 104\nburst = 5")
    (tmp_path / "RTK.toml").write_text(TRUST + bad)
    assert cli.main(["check-config", "--role", "receive"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'RTK.toml'}: field 'retrieve.archives[0].burst': unknown field" in err
    assert "Traceback" not in err
