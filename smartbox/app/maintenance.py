"""Maintenance commands: ``smartbox purge-quarantine`` (retention of originals and staged
copies) and ``smartbox held`` (instances held back from export, with reasons)."""

from __future__ import annotations

import argparse
import sys

from smartbox.settings import Settings


def main(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "held":
        return _held(args, settings)
    if args.command == "purge-quarantine":
        from consumers.export_policy import ExportPolicy
        from smartbox.retention import purge_quarantine
        from smartbox.s3 import S3Store

        report = purge_quarantine(
            S3Store(settings.s3),
            quarantine=settings.quarantine_bucket,
            staging=settings.staging_bucket,
            older_than_seconds=args.older_than_days * 86400,
            alert_seconds=ExportPolicy.from_env().quarantine_alert_seconds,  # as the alert's
            dry_run=args.dry_run,
        )
        verb = "would purge" if args.dry_run else "purged"
        print(f"{verb} {report.purged_batches} batches ({report.purged_objects} objects)")
        for batch_key in report.unprocessed_old:
            print(f"not processed, past retention (kept): {batch_key}", file=sys.stderr)
        if args.staging_grace_days is not None and not args.dry_run:
            from smartbox.retention import purge_staging

            n = purge_staging(
                S3Store(settings.s3),
                staging=settings.staging_bucket,
                grace_seconds=args.staging_grace_days * 86400,
            )
            print(f"purged {n} staged objects of studies acknowledged nationally")
        return 0

    raise AssertionError(args.command)


def _held(args: argparse.Namespace, settings: Settings) -> int:
    from collections import Counter

    from smartbox import layout
    from smartbox.s3 import S3Store
    from smartbox.store import get_json

    store = S3Store(settings.s3)
    reasons: Counter[tuple[str, str]] = Counter()
    prefix = f"{args.trust}/" if args.trust else ""
    for key in store.list_keys(settings.staging_bucket, prefix):
        if not layout.is_study_manifest_key(key):
            continue
        manifest = get_json(store, settings.staging_bucket, key)
        for item in manifest.get("held_back", []):
            reasons[(manifest["trust"], item["reason"])] += 1
            detail = f" ({item['detail']})" if item.get("detail") else ""
            print(
                f"{manifest['trust']}  {manifest['study_uid']}  {item['source']}  "
                f"{item['reason']}{detail}"
            )
    for (trust, reason), n in sorted(reasons.items()):
        print(f"total {trust} {reason}: {n}")
    if not reasons:
        print("nothing held back")
    return 0
