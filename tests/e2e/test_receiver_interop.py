"""Senders nobody here wrote, against the real receiver process (``smartbox receive``, SCP
worker processes, real RabbitMQ and S3): dcmtk storescu with several transfer syntaxes over
parallel associations, pynetdicom, and Orthanc pushing a study through its REST API.
Counts are checked in quarantine and in the study.arrived messages."""

from __future__ import annotations

import os
import subprocess
from collections import Counter
from pathlib import Path

from helpers.pipeline import Pipeline
from helpers.receiver_e2e import (
    Arrivals,
    declare_topology,
    quarantine_instances,
    stored_syntaxes,
    wait_dicom_port,
)
from helpers.receiver_env import dataset_bytes, send_files
from helpers.receiver_orthanc import Orthanc, orthanc_available
from helpers.util import missing
from pydicom.data import get_testdata_file
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from smartbox.synthetic import make_ct_study


def start_receiver(p: Pipeline, code: str = "RTK") -> None:
    p.add_trust(code, quiet_seconds=1)
    declare_topology(p)
    p.start(f"receiver-{code}", "receive", "--trust", code)
    wait_dicom_port(p, code)


def test_dcmtk_parallel_associations_several_transfer_syntaxes(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    p = pipeline
    start_receiver(p)
    ct = [
        make_ct_study(300 + i, series=1, per_series=6).write(tmp_path / f"c{i}") for i in range(3)
    ]
    big = [Path(get_testdata_file(n)) for n in ("ExplVR_BigEnd.dcm", "MR_small_bigendian.dcm")]
    sample = [Path(get_testdata_file(n)) for n in ("SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_jpeg_gdcm.dcm")]
    mr = [Path(get_testdata_file(n)) for n in ("MR_small_jp2klossless.dcm", "MR_small_RLE.dcm")]
    jls = Path(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"))
    runs = [  # storescu option, files, the transfer syntax they must arrive in
        ("-xe", ct[0], ExplicitVRLittleEndian),
        ("-xi", ct[1], ImplicitVRLittleEndian),
        ("-xb", big, ExplicitVRBigEndian),  # storescu sends a file's own syntax when it can
        ("-xd", ct[2], DeflatedExplicitVRLittleEndian),  # deflated by storescu on the fly
        ("-xy", sample[:1], JPEGBaseline8Bit),
        ("-xs", sample[1:], JPEGLosslessSV1),
        ("-xv", mr[:1], JPEG2000Lossless),
        ("-xr", mr[1:], RLELossless),
        ("-xt", [jls], JPEGLSLossless),
    ]
    env = dict(os.environ, TCP_NODELAY="1")
    port = str(p.trusts["RTK"])
    procs = [
        subprocess.Popen(
            ["/usr/bin/storescu", "-aet", "RTK_PACS", "-aec", "SMARTBOX_RTK", option]
            + ["127.0.0.1", port, *map(str, files)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for option, files, _ts in runs
    ]  # nine associations at once
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out
    total = sum(len(files) for _o, files, _ts in runs)
    expected: Counter[str] = Counter()
    for _o, files, ts in runs:
        expected[str(ts)] += len(files)

    arrivals = Arrivals(p)
    arrivals.wait("RTK", total)
    arrivals.assert_exactly_once("RTK", total)
    assert len(quarantine_instances(p, "RTK")) == total
    assert stored_syntaxes(p, "RTK") == expected
    assert p.metric(
        "receiver-RTK", "smartbox_associations_total", trust="RTK", result="accepted"
    ) == len(runs)
    assert p.metric("receiver-RTK", "smartbox_instances_received_total", trust="RTK") == total


def test_pynetdicom_sender_bytes_arrive_unchanged(pipeline: Pipeline, tmp_path: Path) -> None:
    p = pipeline
    start_receiver(p)
    files = make_ct_study(310, series=2, per_series=5).write(tmp_path / "send")
    files += [Path(get_testdata_file(n)) for n in ("rtplan.dcm", "image_dfl.dcm", "test-SR.dcm")]
    result = send_files("127.0.0.1", p.trusts["RTK"], "SMARTBOX_RTK", files, calling="RTK_PACS")
    assert result.statuses == [0] * len(files)

    arrivals = Arrivals(p)
    arrivals.wait("RTK", len(files))
    arrivals.assert_exactly_once("RTK", len(files))
    stored = sorted(dataset_bytes(p.read("quarantine", k)) for k in quarantine_instances(p, "RTK"))
    assert stored == sorted(dataset_bytes(f) for f in files)
    assert len(arrivals.messages("RTK")) == 4  # the CT study and three single-instance studies


def test_orthanc_pushes_a_study_through_its_rest_api(pipeline: Pipeline, tmp_path: Path) -> None:
    if not orthanc_available():
        missing("Orthanc is not installed (Debian: apt-get install orthanc)")
    p = pipeline
    start_receiver(p)
    study = make_ct_study(320, series=3, per_series=5)
    files = study.write(tmp_path / "send")
    orthanc = Orthanc(
        tmp_path / "orthanc",
        aet="RTK_PACS",
        modalities={"smartbox": ("SMARTBOX_RTK", "127.0.0.1", p.trusts["RTK"])},
    ).start()
    try:
        ids = orthanc.upload(files)
        assert len(set(ids)) == len(files)
        (orthanc_study,) = orthanc.get("/studies")
        job = orthanc.push("smartbox", [orthanc_study])
        assert job["InstancesCount"] == len(files) and job["FailedInstancesCount"] == 0
    finally:
        orthanc.stop()

    arrivals = Arrivals(p)
    arrivals.wait("RTK", len(files))
    arrivals.assert_exactly_once("RTK", len(files))
    (message,) = arrivals.messages("RTK")
    assert message["body"]["modalities"] == ["CT"] and not message["body"]["amendment"]
    assert len(quarantine_instances(p, "RTK")) == len(files)
