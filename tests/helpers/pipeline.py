"""Run smartbox processes for end-to-end tests: real RabbitMQ, real S3, real sockets."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pika
from prometheus_client.parser import text_string_to_metric_families

from .services import S3Server

KEY = "e2e-" + "5" * 40
#: the exporter's Ed25519 signing seed and its public key (the national side holds only that)
SIGNING_SEED = "6" * 64


def verify_key_hex() -> str:
    from smartbox.signing import Signer

    return Signer.from_env({"SMARTBOX_EXPORT_SIGNING_KEY": SIGNING_SEED}).public_hex()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: what every structured log line carries (None where it does not apply)
LOG_FIELDS = ("timestamp", "level", "process", "trust", "correlation_id", "message_id", "message")


def json_lines(text: str) -> list[dict]:
    """A log's lines parsed as JSON objects with ``LOG_FIELDS``; anything else fails."""
    records = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise AssertionError(f"a log line is not JSON: {line[:300]!r}") from None
        assert isinstance(record, dict) and all(f in record for f in LOG_FIELDS), line[:300]
        records.append(record)
    return records


def decoded(text: str) -> str:
    """A log as the text its lines say: a JSON line becomes its message, exception and stack
    as written (unescaped), so scans for planted values and for tracebacks see exactly what
    a plain-text log would have shown; any other line stays as it is."""
    out = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            out.append(line)
            continue
        out.extend(str(record[k]) for k in ("message", "exception", "stack") if record.get(k))
    return "\n".join(out)


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    metrics_port: int | None


@dataclass
class Pipeline:
    root: Path
    amqp_url: str
    namespace: str
    s3: S3Server
    trusts: dict[str, int] = field(default_factory=dict)
    procs: dict[str, Proc] = field(default_factory=dict)
    #: added to every process's environment last (e.g. an export schedule that is due)
    extra_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        (self.root / "trusts").mkdir(parents=True, exist_ok=True)
        self.buckets = {
            "quarantine": f"quarantine-{self.namespace}",
            "staging": f"staging-{self.namespace}",
            "national": f"national-{self.namespace}",
            "archive": f"archive-{self.namespace}",
        }

    def add_trust(self, code: str, quiet_seconds: float = 2.0, extra: str = "") -> int:
        port = free_port()
        (self.root / "trusts" / f"{code}.toml").write_text(
            f'code = "{code}"\nname = "Test trust {code}"\nae_title = "SMARTBOX_{code}"\n'
            f'port = {port}\nallowed_callers = ["{code}_PACS"]\nbind_host = "127.0.0.1"\n'
            f"quiet_seconds = {quiet_seconds}\nmax_wait_seconds = 600\n{extra}"
        )
        self.trusts[code] = port
        return port

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.s3.env())
        env.update(
            {
                "SMARTBOX_AMQP_URL": self.amqp_url,
                "SMARTBOX_NAMESPACE": self.namespace,
                "SMARTBOX_QUARANTINE_BUCKET": self.buckets["quarantine"],
                "SMARTBOX_STAGING_BUCKET": self.buckets["staging"],
                "SMARTBOX_NATIONAL_BUCKET": self.buckets["national"],
                "SMARTBOX_PSEUDONYM_KEY": KEY,
                "SMARTBOX_EXPORT_SIGNING_KEY": SIGNING_SEED,
                "SMARTBOX_EXPORT_VERIFY_KEY": verify_key_hex(),
                "SMARTBOX_TRUSTS_DIR": str(self.root / "trusts"),
                "SMARTBOX_SPOOL_DIR": str(self.root / "spool"),
                "SMARTBOX_EXPORT_SCHEDULE": "0 1 1 1 *",
                "SMARTBOX_LOG_LEVEL": "INFO",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.extra_env)
        return env

    def start(self, name: str, *args: str) -> Proc:
        port = free_port()
        log = self.root / f"{name}.{uuid.uuid4().hex[:6]}.log"
        cmd = [sys.executable, "-m", "smartbox", *args, "--metrics-port", str(port)]
        with open(log, "wb") as out:
            popen = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env())
        proc = Proc(name, popen, log, port)
        self.procs[name] = proc
        self.wait_http(proc, "/healthz")
        return proc

    def start_all(self) -> None:
        for code in self.trusts:
            self.start(f"receiver-{code}", "receive", "--trust", code)
        self.start("anonymiser", "anonymise")
        self.start("exporter", "export")
        self.start("ingest", "ingest", "--archive-bucket", self.buckets["archive"])

    def wait_http(self, proc: Proc, path: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                raise AssertionError(f"{proc.name} exited: {proc.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{proc.metrics_port}{path}", timeout=2
                ):
                    return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"{proc.name} did not serve {path}")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(name)
        proc.popen.send_signal(sig)
        proc.popen.wait(30)

    def stop_all(self) -> None:
        procs = [self.procs.pop(name) for name in list(self.procs)]
        for proc in procs:
            proc.popen.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.popen.wait(20)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait(5)

    def _all_logs(self) -> list[Path]:
        return sorted(self.root.glob("*.log"))

    def logs(self) -> str:
        """Every process's log, raw and decoded (``decoded``): what a scan must not find."""
        raw = [p.read_text(errors="replace") for p in self._all_logs()]
        return "\n".join(raw + [decoded(t) for t in raw])

    def log_text(self, name: str) -> str:
        """One process's log as its lines say it (``decoded``)."""
        return decoded(self.procs[name].log.read_text(errors="replace"))

    def json_log(self, name: str) -> list[dict]:
        """Every line a running process logged, each parsed as a JSON object (the daemons'
        format when stderr is not a terminal): a line that is not one fails the test."""
        return json_lines(self.procs[name].log.read_text(errors="replace"))

    def metric(self, name: str, metric: str, **labels: str) -> float:
        proc = self.procs[name]
        with urllib.request.urlopen(f"http://127.0.0.1:{proc.metrics_port}/metrics") as r:
            text = r.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == metric and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    return float(sample.value)
        return 0.0

    def run_cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "smartbox", *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def queue_messages(self, role: str, dlq: bool = False) -> list[dict]:
        """Drain a queue of this namespace (basic_get + ack) and return its messages."""
        queue = f"{self.namespace}.{role}" + (".dlq" if dlq else "")
        from smartbox.rabbit import connection_parameters  # one URL or a cluster's several

        conn = pika.BlockingConnection(connection_parameters(self.amqp_url))
        ch = conn.channel()
        out = []
        while True:
            method, _props, body = ch.basic_get(queue, auto_ack=True)
            if method is None:
                break
            out.append(json.loads(body))
        conn.close()
        return out

    def objects(self, bucket: str, prefix: str = "") -> list[str]:
        client = self.s3.client()
        if not client.bucket_exists(self.buckets[bucket]):
            return []
        return sorted(
            o.object_name
            for o in client.list_objects(self.buckets[bucket], prefix=prefix, recursive=True)
        )

    def read(self, bucket: str, key: str) -> bytes:
        resp = self.s3.client().get_object(self.buckets[bucket], key)
        try:
            return resp.read()
        finally:
            resp.close()
            resp.release_conn()

    def storescu(
        self, code: str, files: list[Path], *extra: str
    ) -> subprocess.CompletedProcess[str]:
        """Send with dcmtk's storescu as the trust's PACS (TCP_NODELAY=1, or Nagle stalls it)."""
        env = dict(os.environ, TCP_NODELAY="1")
        return subprocess.run(
            [
                "/usr/bin/storescu",
                "-aet",
                f"{code}_PACS",
                "-aec",
                f"SMARTBOX_{code}",
                *extra,
                "127.0.0.1",
                str(self.trusts[code]),
                *map(str, files),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )


def running(
    tmp_path: Path, rabbitmq_url: str, namespace: str, s3_server: object
) -> Iterator[Pipeline]:
    """A pipeline for one test; every process it started is stopped afterwards."""
    p = Pipeline(tmp_path, rabbitmq_url, namespace, s3_server)
    try:
        yield p
    finally:
        p.stop_all()
