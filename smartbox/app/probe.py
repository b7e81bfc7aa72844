"""``smartbox probe``: a synthetic study through one trust's real pipeline, every hop timed.

The study (``smartbox.synthetic.make_probe_study``: the reserved probe patient, fresh UIDs) is
sent over DICOM to the trust's receiver as the trust's PACS would send it (its AE title, host
and port from the trust file; the first of its allowed calling AE titles), then followed in
the box's own records:

=============  ==============================================================================
hop            passed when
=============  ==============================================================================
store          every instance was answered Success (0x0000) over one association
staged         the staging manifest of its pseudonymous study UID (computed with the trust's
               own de-identifier) lists every instance and says ``synthetic: true``; this hop
               includes the trust's ``quiet_seconds``
recorded       the exporter recorded it, ``synthetic`` (never queued for the national bucket)
exported       (``--export``) sent, alone, to the canary bucket (``consumers.export_canary``)
acknowledged   (``--export``) the national side verified it and answered accepted
=============  ==============================================================================

Exit 0 when every hop passed, 1 naming the hop that did not, 2 for an operator mistake.
``--every 15m`` runs it as a canary: metrics on its metrics port (``smartbox_probe_*``).
"""

from __future__ import annotations

import argparse
import random
import re
import ssl
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

from smartbox import __version__, metrics
from smartbox.errors import ConfigError, NotFound, PermanentError, TransientError
from smartbox.store import ObjectStore, get_json

if TYPE_CHECKING:
    from consumers.export_state import ExportState
    from smartbox.settings import Settings
    from smartbox.trusts import TrustConfig

HOPS = ("store", "staged", "recorded", "exported", "acknowledged")
_EVERY = re.compile(r"^(\d+(?:\.\d+)?)([smh]?)$")
POLL_SECONDS = 0.5


class HopFailed(Exception):
    """A hop did not pass: which one, and why (no patient data: the study is synthetic)."""

    def __init__(self, hop: str, detail: str) -> None:
        super().__init__(f"hop {hop} failed: {detail}")
        self.hop, self.detail = hop, detail


@dataclass
class Target:
    """What the probe needs of one trust (from its trust file and the regional key)."""

    trust: TrustConfig
    host: str
    calling_ae: str
    pseudo_uid: Callable[[str], str]  # original study UID -> the one staging will use
    tls: ssl.SSLContext | None = None  # DICOM TLS, when the trust's receiver requires it


#: the probe's own TLS material, when the receiver requires DICOM TLS (docs/operations.md)
TLS_CA_ENV = "SMARTBOX_PROBE_TLS_CA_FILE"
TLS_CERT_ENV = "SMARTBOX_PROBE_TLS_CERT_FILE"
TLS_KEY_ENV = "SMARTBOX_PROBE_TLS_KEY_FILE"


def tls_context(trust: TrustConfig, environ: Mapping[str, str] | None = None) -> ssl.SSLContext:
    """The client side of the trust's DICOM TLS, as its PACS would connect: the receiver's
    certificate verified (against ``SMARTBOX_PROBE_TLS_CA_FILE``, else the trust file's CA,
    else the receiver's own certificate: self-signed), host name checked; a client
    certificate (``SMARTBOX_PROBE_TLS_CERT_FILE`` and ``_KEY_FILE``) when the receiver verifies
    its callers. ConfigError (one line, naming what to set) otherwise."""
    from smartbox.settings import environment

    assert trust.tls is not None
    env = environment(environ)
    code = trust.code
    ca = env.get(TLS_CA_ENV, "").strip() or str(trust.tls.ca_file or trust.tls.cert_file)
    cert, key = env.get(TLS_CERT_ENV, "").strip(), env.get(TLS_KEY_ENV, "").strip()
    if trust.tls.verify_client and not (cert and key):
        raise ConfigError(
            f"{code}: the receiver verifies client certificates: set {TLS_CERT_ENV} and "
            f"{TLS_KEY_ENV} to a certificate its CA signed"
        )
    if bool(cert) != bool(key):
        raise ConfigError(f"{code}: set both {TLS_CERT_ENV} and {TLS_KEY_ENV}, or neither")
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{code}: CA file {ca} cannot be used: {exc}") from None
    if cert:
        try:
            ctx.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"{TLS_CERT_ENV}/{TLS_KEY_ENV}: cannot be used: {exc.__class__.__name__}"
            ) from None
    return ctx


def parse_every(text: str) -> float:
    """``15m``, ``30s``, ``1h`` or seconds, at least 10 s (ConfigError otherwise)."""
    m = _EVERY.match(text.strip())
    if not m:
        raise ConfigError(f"--every {text!r}: a duration such as 30s, 15m or 1h")
    seconds = float(m[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[m[2]]
    if seconds < 10:
        raise ConfigError(f"--every {text!r}: at least 10 s")
    return seconds


def target(settings: Settings, code: str, host: str | None) -> Target:
    """The trust's receiver as its PACS sees it, and its de-identifier's UID function."""
    from consumers.deid import Deidentifier
    from consumers.deid.policy import PolicyBuilder
    from smartbox.keys import RegionalKey
    from smartbox.trusts import load_trust

    trust = load_trust(settings.trusts_dir, code)
    tls = tls_context(trust) if trust.tls is not None else None
    if not trust.allowed_callers:
        raise ConfigError(f"{code}: the trust file allows no calling AE title to send")
    engine = Deidentifier(RegionalKey.from_env(), PolicyBuilder.from_env().for_trust(trust))
    retain = "retain_uids" in engine.policy.options
    listen = trust.bind_host
    return Target(
        trust,
        host or ("127.0.0.1" if listen in ("", "0.0.0.0", "::") else listen),  # noqa: S104
        trust.allowed_callers[0],
        (lambda uid: uid) if retain else engine.uid,
        tls,
    )


def _wait(hop: str, deadline: float, what: str, check: Callable[[], Any]) -> Any:
    while True:
        try:
            value = check()
        except TransientError:
            value = None  # storage briefly unavailable: the hop's own deadline decides
        if value:
            return value
        if time.monotonic() >= deadline:
            raise HopFailed(hop, f"{what} (timed out)")
        time.sleep(POLL_SECONDS)


def probe_once(
    t: Target,
    store: ObjectStore,
    state: ExportState,
    staging: str,
    *,
    export: bool,
    timeout: float,
    report: Callable[[str, float, str], None],
    seed: int | None = None,
) -> int:
    """Send one probe study and follow it; ``report(hop, seconds, note)`` after each hop.
    Returns the number of instances stored; raises HopFailed."""
    from smartbox import layout
    from smartbox.synthetic import make_probe_study

    from .demo import send_study

    code = t.trust.code
    study = make_probe_study(seed if seed is not None else random.randrange(1, 10**9))  # noqa: S311
    n = len(study.datasets)
    deadline = time.monotonic() + timeout
    started = time.monotonic()
    statuses = send_study(
        t.host, t.trust.port, t.trust.ae_title, study.datasets, t.calling_ae, tls=t.tls
    )
    if all(s == -1 for s in statuses):
        raise HopFailed(
            "store",
            f"no association with {t.trust.ae_title} at {t.host}:{t.trust.port} as "
            f"{t.calling_ae} (refused, or nothing listening)",
        )
    bad = sorted({s for s in statuses if s != 0})
    if bad:
        codes = ", ".join("no answer" if s < 0 else f"0x{s:04X}" for s in bad)
        raise HopFailed("store", f"{len(bad)} status(es) other than Success: {codes}")
    report("store", time.monotonic() - started, f"{n} instances to {t.host}:{t.trust.port}")

    started = time.monotonic()
    prefix = f"{code}/{t.pseudo_uid(study.study_uid)}/"

    def manifest() -> dict[str, Any] | None:
        keys = [k for k in store.list_keys(staging, prefix) if layout.is_study_manifest_key(k)]
        return get_json(store, staging, keys[0]) if keys else None

    doc = _wait("staged", deadline, "no staging manifest of the probe study", manifest)
    if len(doc.get("instances", [])) != n:
        reasons = sorted({str(h.get("reason")) for h in doc.get("held_back", [])})
        raise HopFailed("staged", f"{n - len(doc['instances'])} instance(s) held back: {reasons}")
    if doc.get("synthetic") is not True:
        raise HopFailed(
            "staged",
            "staged but not marked synthetic: is the anonymiser older than the probe? The "
            "exporter will treat it as a real study",
        )
    report("staged", time.monotonic() - started, "de-identified and marked synthetic")

    started = time.monotonic()
    batch_id = str(doc["batch_id"])
    record = _wait("recorded", deadline, "no exporter record", lambda: state.get(code, batch_id))
    if not record.get("synthetic"):
        raise HopFailed("recorded", "the exporter did not recognise it as synthetic")
    report("recorded", time.monotonic() - started, f"state {record['state']}")
    if not export:
        return n

    def state_is(hop: str, *wanted: str) -> dict[str, Any] | None:
        rec = state.get(code, batch_id)
        if rec is not None and rec["state"] in ("held", "failed"):
            why = "; ".join(rec.get("reasons") or []) or "no canary bucket at the exporter?"
            raise HopFailed(hop, f"the exporter recorded it {rec['state']} ({why})")
        return rec if rec is not None and rec["state"] in wanted else None

    started = time.monotonic()
    sent = lambda: state_is("exported", "sent", "acked")  # noqa: E731
    _wait("exported", deadline, "not sent to the canary bucket", sent)
    report("exported", time.monotonic() - started, "to the canary bucket")
    started = time.monotonic()
    acked = lambda: state_is("acknowledged", "acked")  # noqa: E731
    _wait("acknowledged", deadline, "no accepting receipt", acked)
    report("acknowledged", time.monotonic() - started, "verified by the national side")
    return n


# --- the command ----------------------------------------------------------------------------
def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "probe",
        help="send a synthetic study to a trust's receiver and follow it hop by hop "
        "(never exported to the national destination)",
    )
    p.add_argument("--trust", action="append", dest="trusts", required=True, metavar="CODE")
    p.add_argument(
        "--export",
        action="store_true",
        help="follow it to the national side too: exported to the canary bucket "
        "(SMARTBOX_EXPORT_CANARY_BUCKET, for the exporter as for the probe) and acknowledged",
    )
    p.add_argument("--timeout", type=float, default=300.0, help="seconds (default %(default)s)")
    p.add_argument("--host", help="the receiver's address (default: the trust file's bind_host)")
    p.add_argument("--every", help="run as a canary on this interval (30s, 15m, 1h), with metrics")
    p.add_argument("--metrics-port", type=int, default=9104, help="with --every (0: any free)")
    p.add_argument("--metrics-host", default="127.0.0.1", help="with --every")


def main(args: argparse.Namespace, settings: Settings, out: TextIO = sys.stdout) -> int:
    """Run ``smartbox probe``; ConfigError (exit 2) for operator mistakes."""
    from consumers.export_policy import ExportPolicy
    from consumers.export_state import ExportState
    from smartbox.s3 import S3Store
    from smartbox.trusts import TRUST_CODE_RE

    if not 1 <= args.timeout <= 86400:
        raise ConfigError(f"--timeout {args.timeout:g}: seconds from 1 to 86400")
    every = parse_every(args.every) if args.every is not None else None
    for code in args.trusts:
        if not TRUST_CODE_RE.match(code):
            raise ConfigError(f"--trust {code!r}: 2-8 upper-case letters or digits")
    if args.export and ExportPolicy.from_env().canary_bucket is None:
        raise ConfigError(
            "--export: SMARTBOX_EXPORT_CANARY_BUCKET is not set; probe studies are exported "
            "only to a canary bucket, never to the national one (set it for the exporter too)"
        )
    targets = [target(settings, code, args.host) for code in dict.fromkeys(args.trusts)]
    store = S3Store(settings.s3)
    state = ExportState(store, settings.staging_bucket)
    hops = HOPS if args.export else HOPS[:3]

    def one(t: Target) -> bool:
        code = t.trust.code

        def report(hop: str, seconds: float, note: str) -> None:
            metrics.PROBE_SECONDS.labels(code, hop).set(seconds)
            print(f"{code}  {hop:<13}{seconds:8.2f} s  {note}", file=out, flush=True)

        try:
            probe_once(
                t,
                store,
                state,
                settings.staging_bucket,
                export=args.export,
                timeout=args.timeout,
                report=report,
            )
        except HopFailed as exc:
            metrics.PROBE_FAILURES.labels(code, exc.hop).inc()
            print(f"smartbox: probe {code}: {exc}", file=sys.stderr, flush=True)
            return False
        metrics.PROBE_LAST_SUCCESS.labels(code).set(time.time())
        stamp = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        print(f"{code}  probe passed every hop ({', '.join(hops)}) at {stamp}", file=out)
        return True

    if every is None:
        return 0 if all([one(t) for t in targets]) else 1
    return _canary(args, targets, hops, every, one, out)


def _canary(
    args: argparse.Namespace,
    targets: list[Target],
    hops: tuple[str, ...],
    every: float,
    one: Callable[[Target], bool],
    out: TextIO,
) -> int:
    """Probe every ``every`` seconds until SIGTERM or SIGINT; metrics on the metrics port."""
    from smartbox.runtime import install_stop_signals

    for t in targets:  # every series at zero from the start (an alert sees a trust at once)
        for hop in hops:
            metrics.PROBE_SECONDS.labels(t.trust.code, hop)
            metrics.PROBE_FAILURES.labels(t.trust.code, hop)
        metrics.PROBE_LAST_SUCCESS.labels(t.trust.code)
    metrics.BUILD.info({"version": __version__, "role": "probe"})
    server = metrics.MetricsServer(args.metrics_host, args.metrics_port).start()
    stop = threading.Event()
    install_stop_signals(stop)
    print(
        f"probing {', '.join(t.trust.code for t in targets)} every {every:g} s; metrics on "
        f"http://{args.metrics_host}:{server.port}/metrics",
        file=out,
        flush=True,
    )
    try:
        while not stop.is_set():
            started = time.monotonic()
            for t in targets:
                if stop.is_set():
                    break
                try:
                    one(t)
                except (TransientError, NotFound, PermanentError) as exc:
                    # storage down mid-probe: counted at the hop it stopped, the canary goes on
                    metrics.PROBE_FAILURES.labels(t.trust.code, "staged").inc()
                    print(f"smartbox: probe {t.trust.code}: {exc}", file=sys.stderr)
            stop.wait(max(0.0, every - (time.monotonic() - started)))
    finally:
        server.stop()
    return 0
