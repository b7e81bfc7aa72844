"""The pipeline under load, on real RabbitMQ, SeaweedFS and dcmtk storescu, separate processes:
instances reach quarantine while their study is still arriving (upload while receiving, with the
backlog visible as metrics), and one big study is shared by every anonymiser yet staged as one
manifest listing every instance exactly once."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

from helpers.pipeline import Pipeline, free_port
from helpers.receiver_e2e import declare_topology
from helpers.util import wait_for

from smartbox.synthetic import make_ct_study

BACKLOG = "smartbox_receiver_upload_backlog_instances"
BACKLOG_BYTES = "smartbox_receiver_upload_backlog_bytes"
LAG = "smartbox_receiver_upload_lag_seconds"


def quarantined(p: Pipeline, code: str) -> list[str]:
    return [k for k in p.objects("quarantine", f"{code}/") if k.endswith(".dcm")]


def test_instances_are_uploaded_while_their_studies_are_still_arriving(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    p = pipeline
    p.add_trust("RUP", quiet_seconds=600)  # nothing goes quiet during this test
    declare_topology(p)
    p.start("receiver-RUP", "receive", "--trust", "RUP")
    files = []
    for n in range(3):  # several studies at once: uploads are not one study at a time
        files += make_ct_study(400 + n, series=2, per_series=10).write(tmp_path / f"s{n}")
    result = p.storescu("RUP", files)
    assert result.returncode == 0, result.stderr

    wait_for(lambda: len(quarantined(p, "RUP")) == len(files), 60, "every instance uploaded")
    # the gauges are refreshed every poll (0.5 s), and the uploads can finish within one: a
    # reading taken before the instances arrived still says 0 for both. Still open: nothing
    # announced, every instance still held in the spool (deleted only once its study.arrived
    # is confirmed), none awaiting upload.
    wait_for(
        lambda: (
            (
                p.metric("receiver-RUP", "smartbox_spool_files", trust="RUP"),
                p.metric("receiver-RUP", BACKLOG, trust="RUP"),
            )
            == (len(files), 0)
        ),
        30,
        "the gauges: every instance in the spool, none awaiting upload",
    )
    assert len({k.split("/")[1] for k in quarantined(p, "RUP")}) == 3, "three studies"
    assert p.metric("receiver-RUP", BACKLOG_BYTES, trust="RUP") == 0
    assert p.metric("receiver-RUP", LAG, trust="RUP") == 0
    assert p.queue_messages("anonymiser") == []
    assert not [k for k in p.objects("quarantine", "RUP/") if "/batches/" in k]


def test_the_upload_backlog_is_visible_while_storage_is_down(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    p = pipeline
    p.add_trust("RDN", quiet_seconds=1)
    declare_topology(p)
    p.extra_env = {"SMARTBOX_S3_ENDPOINT": f"127.0.0.1:{free_port()}"}  # nothing listens
    p.start("receiver-RDN", "receive", "--trust", "RDN")
    files = make_ct_study(410, series=1, per_series=6).write(tmp_path / "send")
    result = p.storescu("RDN", files)
    assert result.returncode == 0, result.stderr  # accepted into the spool all the same

    wait_for(
        lambda: p.metric("receiver-RDN", BACKLOG, trust="RDN") == len(files), 30, "the backlog"
    )
    spooled = p.metric("receiver-RDN", "smartbox_spool_bytes", trust="RDN")
    assert spooled > 0
    assert p.metric("receiver-RDN", BACKLOG_BYTES, trust="RDN") == spooled
    wait_for(lambda: p.metric("receiver-RDN", LAG, trust="RDN") > 0, 30, "the upload lag")
    assert p.metric("receiver-RDN", "smartbox_relay_retries_total", trust="RDN") > 0


def test_one_big_study_is_shared_by_two_anonymisers_and_staged_once(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    p = pipeline
    p.add_trust("RBG", quiet_seconds=8, extra="announce_chunk_instances = 50\n")
    declare_topology(p)
    first = p.start("anonymiser-1", "anonymise")
    second = p.start("anonymiser-2", "anonymise")
    p.start("receiver-RBG", "receive", "--trust", "RBG")
    files = make_ct_study(420, series=2, per_series=250).write(tmp_path / "send")
    result = p.storescu("RBG", files)
    assert result.returncode == 0, result.stderr

    staged: list[dict] = []
    wait_for(lambda: staged.extend(p.queue_messages("exporter")) or staged, 300, "study.staged")
    wait_for(lambda: not p.objects("staging", "_parts/"), 60, "manifest parts deleted")
    staged += p.queue_messages("exporter")
    # one batch, announced once (a second study.staged of it would be a redelivery)
    assert {m["body"]["batch_id"] for m in staged} == {staged[0]["body"]["batch_id"]}
    body = staged[0]["body"]
    assert (body["instances_in"], body["instances_staged"], body["instances_held_back"]) == (
        500,
        500,
        0,
    )

    # both anonymisers did part of the study
    shares = [
        p.metric(proc.name, "smartbox_anonymiser_instances_processed_total", trust="RBG")
        for proc in (first, second)
    ]
    assert all(share > 0 for share in shares), shares
    assert sum(shares) == 500

    # the study manifest: one record, every instance exactly once, each matching its object
    manifests = [k for k in p.objects("staging", "RBG/") if "/manifest-" in k]
    assert manifests == [body["manifest_key"]]
    manifest = json.loads(p.read("staging", body["manifest_key"]))
    entries = manifest["instances"]
    assert len(entries) == 500 and manifest["held_back"] == []
    assert len({e["sop_instance_uid"] for e in entries}) == 500
    assert Counter(e["key"] for e in entries).most_common(1)[0][1] == 1
    assert sorted(manifest["series"].values()) == [250, 250]
    objects = [k for k in p.objects("staging", "RBG/") if k.endswith(".dcm")]
    assert sorted(objects) == sorted(e["key"] for e in entries)
    for entry in entries[::25]:
        assert hashlib.sha256(p.read("staging", entry["key"])).hexdigest() == entry["sha256"]
