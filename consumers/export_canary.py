"""Probe studies at the exporter: recorded like any study, never sent to the national bucket.

The anonymiser marks a ``smartbox probe`` study synthetic (``study.staged`` body and staging
manifest ``synthetic: true``; ``smartbox.synthetic.PROBE_PATIENT_ID``). Its record carries
``synthetic`` and is never queued, so no export pass can pick it:

* without a canary bucket (``SMARTBOX_EXPORT_CANARY_BUCKET`` unset) it is recorded ``held``:
  the probe's last hop is the exporter's record;
* with one, it is exported at once, alone, in its own signed batch into the canary bucket on
  the national store; the batch manifest (signed) and the ``export.batch`` both say
  ``synthetic: true``, and the national side verifies it, answers a receipt and archives
  nothing. Its claim lives under ``layout.canary_claim_key``, outside the claims an export
  pass resumes, and an export pass drops any queue marker of a synthetic record
  (``Exporter._select``), so a requeue cannot route it to the national bucket either.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from smartbox import layout
from smartbox.store import get_json

from .export_batch import BatchRunner

if TYPE_CHECKING:
    from .exporter import Exporter

log = logging.getLogger("consumers.exporter")


def probe_state(exporter: Exporter) -> str:
    """The state a new synthetic record starts in: ``pending`` (exported to the canary now)
    with a canary bucket, else ``held`` (never exported)."""
    return "pending" if exporter.policy.canary_bucket else "held"


def export_probe(exporter: Exporter, record: dict[str, Any]) -> None:
    """Export one synthetic study version to the canary bucket (resumable: a redelivered
    ``study.staged`` finishes the claim a crash left)."""
    bucket = exporter.policy.canary_bucket
    if not bucket or record["state"] != "pending":
        return
    code, export_id = record["trust"], record["export_id"]
    key = layout.canary_claim_key(code, export_id)
    claim = {
        "trust": code,
        "class": record["class"],
        "ids": [export_id],
        "attempts": {export_id: record["attempts"] + 1},
        "progress": {},
        "withdrawals": [],
        "message": None,
        "created_at": time.time(),
    }
    if not exporter.state.create_claim(key, claim):
        claim = get_json(exporter.store, exporter.staging, key)
    exporter.national.ensure_bucket(bucket)
    runner = BatchRunner(
        exporter.state, exporter.national, bucket, exporter.bus, exporter.signer, synthetic=True
    )
    claim = runner.run(key, claim)
    progress = claim["progress"].get(export_id, {})
    if progress.get("status") == "bad":
        record = exporter.state.get(code, export_id) or record
        record.update(state="failed", reasons=[*record["reasons"], progress["reason"]])
        exporter.state.put(record)
        log.error(
            "%s: probe study version %s not exported: %s", code, export_id, progress["reason"]
        )
        return
    log.info(
        "%s: probe study version %s exported to the canary bucket %s (batch %s)",
        code,
        export_id,
        bucket,
        claim.get("batch_id"),
    )
