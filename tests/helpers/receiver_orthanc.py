"""A private Orthanc (Debian package) as a sending PACS: files are uploaded over its REST API,
then pushed to a DICOM modality with ``POST /modalities/{id}/store``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .pipeline import free_port

ORTHANC = "/usr/sbin/Orthanc"


def orthanc_available() -> bool:
    return os.access(ORTHANC, os.X_OK) or shutil.which("Orthanc") is not None


@dataclass
class Orthanc:
    directory: Path
    aet: str
    modalities: dict[str, tuple[str, str, int]]  # name -> (AE title, host, port)
    http_port: int = field(default_factory=free_port)
    dicom_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    #: more configuration (e.g. which AE titles may C-FIND and C-MOVE)
    extra: dict[str, Any] = field(default_factory=dict)

    def start(self, timeout: float = 60) -> Orthanc:
        self.directory.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "smartbox-test-pacs",
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "StorageDirectory": str(self.directory / "storage"),
            "IndexDirectory": str(self.directory / "index"),
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": [],
            "DicomModalities": {k: list(v) for k, v in self.modalities.items()},
            **self.extra,
        }
        path = self.directory / "orthanc.json"
        path.write_text(json.dumps(config))
        with open(self.directory / "orthanc.log", "ab") as out:
            self.process = subprocess.Popen(
                [ORTHANC, str(path)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(os.environ, TCP_NODELAY="1"),  # Debian's build stalls on Nagle
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited; see {self.directory}/orthanc.log")
            try:
                self.get("/system")
                return self
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("Orthanc did not answer over HTTP")

    def _request(self, method: str, path: str, body: bytes | None, ctype: str) -> Any:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}",
            data=body,
            method=method,
            headers={"Content-Type": ctype},
        )
        with urllib.request.urlopen(req, timeout=300) as resp:
            return json.loads(resp.read() or b"null")

    def get(self, path: str) -> Any:
        return self._request("GET", path, None, "application/json")

    def upload(self, files: list[Path]) -> list[str]:
        """Store files in Orthanc; returns their Orthanc instance ids."""
        return [
            self._request("POST", "/instances", f.read_bytes(), "application/dicom")["ID"]
            for f in files
        ]

    def push(self, modality: str, resources: list[str]) -> Any:
        """C-STORE the resources to a configured modality (synchronously)."""
        body = json.dumps({"Resources": resources, "Synchronous": True}).encode()
        return self._request("POST", f"/modalities/{modality}/store", body, "application/json")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
            self.process = None
