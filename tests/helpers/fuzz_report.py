"""What the fuzz run reads back from a running pipeline: process memory, queue depths, the
dead-letter queue, staged objects and manifests, and leaks of planted values.

Evidence printed from here names kinds and counts, never a planted value: a leak is reported
by the category of what leaked (``nhs``, ``name``...), not by the value itself.
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pika
from pika.exceptions import ChannelClosedByBroker

from .pipeline import Pipeline

UID_RE = re.compile(rb"[0-9]+(?:\.[0-9]+){3,}")
MAX_INFLATED = 64 << 20


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (read from /proc)."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return out


def peak_rss_mib(pid: int) -> float:
    """VmHWM (peak resident set) of one process, in MiB (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def queue_depth(p: Pipeline, queue: str) -> int | None:
    """Ready messages in a queue (passive declare); None if it does not exist."""
    conn = pika.BlockingConnection(pika.URLParameters(p.amqp_url))
    try:
        ch = conn.channel()
        return int(ch.queue_declare(queue, passive=True).method.message_count)
    except ChannelClosedByBroker:
        return None
    finally:
        if conn.is_open:
            conn.close()


def drain(p: Pipeline, queue: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Every message of ``queue`` (body, headers), removed from it."""
    conn = pika.BlockingConnection(pika.URLParameters(p.amqp_url))
    out = []
    try:
        ch = conn.channel()
        while True:
            method, props, body = ch.basic_get(queue, auto_ack=True)
            if method is None:
                break
            out.append((json.loads(body), dict(props.headers or {})))
    finally:
        conn.close()
    return out


def read_objects(p: Pipeline, bucket: str, keys: list[str]) -> dict[str, bytes]:
    with ThreadPoolExecutor(8) as pool:
        return dict(zip(keys, pool.map(lambda k: p.read(bucket, k), keys), strict=True))


def dataset_text(obj: bytes) -> bytes:
    """The bytes to scan for leaks: a deflated Part-10 object inflated (bounded), else as is."""
    if obj[128:132] != b"DICM":
        return obj
    pos, syntax = 132, b""
    while pos + 8 <= len(obj) and struct.unpack_from("<H", obj, pos)[0] == 0x0002:
        element = struct.unpack_from("<H", obj, pos + 2)[0]
        vr = obj[pos + 4 : pos + 6]
        if vr in (b"OB", b"UN", b"UT", b"SQ"):
            length, start = struct.unpack_from("<I", obj, pos + 8)[0], pos + 12
        else:
            length, start = struct.unpack_from("<H", obj, pos + 6)[0], pos + 8
        if element == 0x0010:
            syntax = obj[start : start + length].rstrip(b"\x00 ")
        pos = start + length
    if syntax != b"1.2.840.10008.1.2.1.99":
        return obj
    try:
        inflated = zlib.decompressobj(-zlib.MAX_WBITS).decompress(obj[pos:], MAX_INFLATED)
    except zlib.error:
        inflated = b""
    return obj[:pos] + inflated


@dataclass
class Leaks:
    """Planted values found, by category, and in how many objects or lines."""

    categories: Counter[str] = field(default_factory=Counter)
    where: int = 0

    def __bool__(self) -> bool:
        return self.where > 0


def find_leaks(blobs: list[bytes], identifiers: dict[str, str], uids: set[str]) -> Leaks:
    """Which planted identifiers (value -> category) and original UIDs occur in ``blobs``."""
    leaks = Leaks()
    needles = [(v.encode(), c) for v, c in identifiers.items()]
    uid_set = {u.encode() for u in uids}
    for blob in blobs:
        found = {c for v, c in needles if v in blob}
        if uid_set.intersection(UID_RE.findall(blob)):
            found.add("original_uid")
        if found:
            leaks.where += 1
            leaks.categories.update(found)
    return leaks


def scrub(text: str, identifiers: dict[str, str], uids: set[str]) -> str:
    """``text`` with every planted value replaced by its category (for printed evidence)."""
    for value, category in sorted(identifiers.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(value, f"<{category}>")
    for uid in uids:
        text = text.replace(uid, "<original_uid>")
    return text


def tracebacks(text: str) -> Counter[str]:
    """Tracebacks in a log, by where they were raised and what: ``file:line func: Error``."""
    out: Counter[str] = Counter()
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if not line.startswith("Traceback (most recent call last)"):
            continue
        where, j = "?", i + 1
        while j < len(lines) and (lines[j].startswith(" ") or not lines[j].strip()):
            frame = re.match(r'\s+File "([^"]+)", line (\d+), in (\S+)', lines[j])
            if frame:
                where = f"{Path(frame[1]).name}:{frame[2]} {frame[3]}"
            j += 1
        error = lines[j].split(" ", 1)[0].rstrip(":") if j < len(lines) else "?"
        out[f"{where}: {error}"] += 1
    return out
