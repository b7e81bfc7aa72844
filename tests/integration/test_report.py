"""``smartbox report``: a trust's transparency report, built from the records a real pipeline
wrote over several days, opened in a real browser (headless Chromium): the plots are there
with the right numbers, and nothing that identifies a patient is."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import date, datetime
from html.parser import HTMLParser
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from helpers.local_pipeline import LocalPipeline, local_pipeline
from helpers.receiver_env import trust_code
from helpers.util import missing

from smartbox.app.report import build_report
from smartbox.store import LocalStore
from smartbox.synthetic import SyntheticStudy, make_ct_study

ROOT = Path(__file__).resolve().parents[2]
LONDON = ZoneInfo("Europe/London")
PERIOD = ("2025-03-01", "2025-03-07")


def at(day: str) -> datetime:
    return datetime.fromisoformat(day + "T12:00:00").replace(tzinfo=LONDON)


def held_back_study(seed: int) -> SyntheticStudy:
    """Six instances, two of which the pixel gate must hold back (for two reasons)."""
    study = make_ct_study(seed, series=3, per_series=2)
    study.datasets[0].BurnedInAnnotation = "YES"
    study.datasets[1].ImageType = ["DERIVED", "SECONDARY", "OTHER"]
    return study


def planted(studies: list[SyntheticStudy]) -> set[str]:
    """Every identifying value of the sources, the original UIDs included."""
    values = set()
    for s in studies:
        values.update(s.identifiers)
        for ds in s.datasets:
            values.update({str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID)})
    return values


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalPipeline, set[str]]]:
    """Four days of a trust's traffic: one before the report's period, three inside it."""
    root = tmp_path_factory.mktemp("report")
    studies = [make_ct_study(7100 + i, series=2, per_series=2) for i in range(4)]
    studies.insert(3, held_back_study(7200))
    with local_pipeline(root, trust_code()) as p:
        with p.day(at("2025-02-20")):  # outside the period: must not be counted
            p.send(studies[0])
            assert p.export() == 4
        with p.day(at("2025-03-03")):  # 2 studies, 8 instances, exported and acknowledged
            p.send(studies[1])
            p.send(studies[2])
            assert p.export() == 8
        with p.day(at("2025-03-04")):  # 6 instances in, 2 held back, not exported yet
            p.send(studies[3])
        with p.day(at("2025-03-05")):  # yesterday's 4 exported; 1 new study stays pending
            assert p.export() == 4
            p.send(studies[4])
        secrets = planted(studies)
        for manifest in p.staging_records():  # pseudonymous ids are not for the report either
            secrets.add(manifest["study_uid"])
            secrets.update(i["patient"] for i in manifest["instances"])
        yield p, secrets


def test_counts_per_day_from_the_records(history: tuple[LocalPipeline, set[str]]) -> None:
    p, _ = history
    report = build_report(p.store, code=p.code, start=date(2025, 3, 1), end=date(2025, 3, 7))
    by_day = {d.isoformat(): c for d, c in report.days}
    assert len(by_day) == 7
    d3, d4, d5 = by_day["2025-03-03"], by_day["2025-03-04"], by_day["2025-03-05"]
    assert (d3.received_studies, d3.received_instances, d3.staged_instances) == (2, 8, 8)
    assert (d3.exported_studies, d3.exported_instances, d3.acknowledged_instances) == (2, 8, 8)
    assert (d4.received_instances, d4.staged_instances, d4.held_instances) == (6, 4, 2)
    assert dict(d4.held_by_reason) == {"burned_in_annotation": 1, "image_type_secondary": 1}
    assert (d4.exported_instances, d5.exported_instances, d5.acknowledged_instances) == (0, 4, 4)
    assert (d5.received_instances, d5.staged_instances) == (4, 4)
    t = report.totals
    assert (t.received_studies, t.received_instances, t.staged_instances) == (4, 18, 16)
    assert (t.held_instances, t.exported_instances, t.acknowledged_instances) == (2, 12, 12)
    assert (report.awaiting_deidentification, report.awaiting_export) == (0, 1)
    assert report.awaiting_acknowledgement == 0
    [(profile, batches)] = report.profiles
    assert batches == 4 and profile.key_version == "k1"
    assert profile.options == (
        "retain_longitudinal_modified_dates",
        "retain_patient_characteristics",
    )
    [(_opts, actions)] = report.attributes
    removed = {a.keyword for a in actions["X"]}
    assert {"PatientBirthName", "OtherPatientIDsSequence", "InstitutionAddress"} <= removed
    assert "PatientName" in {a.keyword for a in actions["Z"]}
    assert "StudyInstanceUID" in {a.keyword for a in actions["U"]}


class _Dom(HTMLParser):
    """Bars of the plots as Chromium's DOM has them, and all visible text."""

    def __init__(self) -> None:
        super().__init__()
        self.bars: list[dict[str, str]] = []
        self.svgs: list[str] = []
        self.tags: set[str] = set()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.add(tag)
        if tag == "svg":
            self.svgs.append(a.get("id", ""))
        if tag == "rect" and "data-value" in a:
            self.bars.append(a)
        self.urls += [v for k, v in a.items() if k in ("src", "href") and v]


def chromium(*args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("chromium")
    if exe is None:
        missing("chromium not installed (scripts/bootstrap --test installs it)")
    return subprocess.run(
        [
            exe,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--user-data-dir={tmp / 'chromium-profile'}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "HOME": str(tmp)},
    )


def test_report_in_a_real_browser(history: tuple[LocalPipeline, set[str]], tmp_path: Path) -> None:
    p, secrets = history
    out = tmp_path / "report.html"
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "smartbox",
            "report",
            "--trust",
            p.code,
            "--from",
            PERIOD[0],
            "--to",
            PERIOD[1],
            "--out",
            str(out),
            "--local-store",
            str(p.root / "objects"),
            "--pdf",
            str(tmp_path / "report.pdf"),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
        env={**os.environ, "SMARTBOX_TRUSTS_DIR": str(p.root / "trusts")},
    )
    assert cli.returncode == 0, cli.stderr
    assert "4 studies / 18 instances received, 16 de-identified, 2 held back" in cli.stdout
    pdf = (tmp_path / "report.pdf").read_bytes()  # printed by headless Chromium
    assert pdf[:5] == b"%PDF-" and b"%%EOF" in pdf[-64:] and len(pdf) > 20_000
    assert len(re.findall(rb"/Type\s*/Page[^s]", pdf)) >= 2  # the whole page, not a blank
    html = out.read_text(encoding="utf-8")
    assert f"Test Trust {p.code}" in html
    assert not re.search(r"<script|<link|<img|@import|url\(", html, re.I), "not self-contained"

    png = tmp_path / "report.png"
    keep = os.environ.get("SMARTBOX_TEST_KEEP_REPORT")  # a directory: keep the page to look at
    shot = chromium(f"--screenshot={png}", "--window-size=1100,2400", out.as_uri(), tmp=tmp_path)
    assert png.is_file(), shot.stderr[-2000:]
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000  # a page, not a blank
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1100, 2400)
    if keep:
        shutil.copy(out, Path(keep) / "report.html")
        shutil.copy(png, Path(keep) / "report.png")

    dump = chromium("--dump-dom", out.as_uri(), tmp=tmp_path)
    assert dump.returncode == 0, dump.stderr[-2000:]
    dom = _Dom()
    dom.feed(dump.stdout)
    assert {"studies-chart", "instances-chart", "held-chart"} <= set(dom.svgs)
    assert not dom.urls and "script" not in dom.tags
    plotted = {
        (b["data-series"], b.get("data-day", b.get("data-reason")), int(b["data-value"]))
        for b in dom.bars
    }
    assert len([b for b in dom.bars if b.get("data-day")]) == 7 * (3 + 5)  # every day, series
    for point in [
        ("received", "2025-03-03", 8),
        ("staged", "2025-03-04", 4),
        ("held", "2025-03-04", 2),
        ("exported", "2025-03-05", 4),
        ("acknowledged", "2025-03-03", 8),
        ("received", "2025-03-01", 0),
        ("held", "burned_in_annotation", 1),
        ("held", "image_type_secondary", 1),
    ]:
        assert point in plotted, point
    assert not any(b.get("data-day") == "2025-02-20" for b in dom.bars)
    assert {b["data-value"] for b in dom.bars if b["data-series"] == "received"} & {"4", "8"}

    leaked = sorted(s for s in secrets if s and (s in dump.stdout or s in html))
    assert not leaked, f"identifying values in the report: {leaked[:5]}"
    assert "Annex E" in dump.stdout and "(0010,0010)" in dump.stdout  # Patient's Name listed


SPAN = ["--from", "2025-03-01", "--to", "2025-03-02"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--trust", "RGT", "--from", "2025-13-01", "--to", "2025-03-02"], "--from"),
        (["--trust", "RGT", "--from", "2025-03-02", "--to", "2025-03-01"], "before"),
        (["--trust", "nope", *SPAN], "--trust"),
        (["--trust", "ZZZ", *SPAN, "--local-store", "{empty}"], "unknown trust ZZZ"),
        (["--trust", "ZZZ", *SPAN, "--local-store", "{absent}"], "--local-store"),
        (["--trust", "ZZZ", "--from", "2024-01-01", "--to", "2025-03-02"], "366 days"),
        (["--trust", "ZZZ", *SPAN, "--timezone", "Mars/Olympus"], "time zone"),
        (
            ["--trust", "ZZY", *SPAN, "--local-store", "{empty}", "--out", "/proc/r.html"],
            "cannot be written",
        ),
        (
            ["--trust", "ZZY", *SPAN, "--local-store", "{empty}", "--pdf", "r.pdf"]
            + ["--browser", "/no/such/chromium"],
            "--browser",
        ),
    ],
)
def test_operator_mistakes_are_one_line(tmp_path: Path, args: list[str], needle: str) -> None:
    (tmp_path / "objects").mkdir()
    (tmp_path / "ZZY.toml").write_text(  # a trust with a file but no records yet
        'code = "ZZY"\nname = "Z"\nae_title = "SB_ZZY"\nport = 1\nallowed_callers = ["*"]\n'
    )
    paths = {"{empty}": str(tmp_path / "objects"), "{absent}": str(tmp_path / "absent")}
    out = subprocess.run(
        [sys.executable, "-m", "smartbox", "report", *(paths.get(a, a) for a in args)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "SMARTBOX_TRUSTS_DIR": str(tmp_path)},
    )
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and needle in lines[0], out.stderr
    assert not list(tmp_path.glob("*.html"))


def test_missing_and_foreign_records_are_tolerated(tmp_path: Path) -> None:
    """No quarantine bucket (purged, or never created), an unreadable manifest, an export
    record of another shape and a stray object: still a report, the skips counted."""
    from smartbox import layout
    from smartbox.store import put_json

    store = LocalStore(tmp_path)
    store.ensure_bucket("staging")
    b1, b2 = "1" * 32, "2" * 32
    put_json(
        store,
        "staging",
        layout.study_manifest_key("RGT", "2.25.1", b1),
        {"instances": [], "held_back": [{"source": "x", "reason": "burned_in_annotation"}]},
    )
    store.put_bytes("staging", layout.study_manifest_key("RGT", "2.25.1", b2), b"not json")
    put_json(store, "staging", layout.record_key("RGT", b1), {"no": "fields"})
    store.put_bytes("staging", "RGT/2.25.1/notes.txt", b"stray")
    today = datetime.now(LONDON).date()
    report = build_report(store, code="RGT", start=today, end=today)
    assert report.totals.held_instances == 1 and report.totals.received_instances == 1
    assert report.skipped_records == 2
