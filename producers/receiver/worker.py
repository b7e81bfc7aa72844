"""Entry point of one SCP worker process (started by ``WorkerPool``; not a user command).

``python -m producers.receiver.worker CONTROL_FD LISTEN_FD``: reads its ``WorkerSettings`` from
the control socket, serves C-STORE on the inherited listening socket, reports its counters
every quarter second, holds its C-STORE responses back by the pace it is sent (intake
pacing, ``pace.py``) and exits when told to stop or when the control socket closes (the
receiver process is gone).
"""

from __future__ import annotations

import functools
import logging
import os
import re
import socket
import sys
import threading
from multiprocessing.connection import Connection

import pydicom.uid

from smartbox import logs
from smartbox.process import freeze_startup_objects

from .scp import StoreSCP
from .spool import Spool
from .workers import WorkerSettings, counter_snapshot

log = logging.getLogger(__name__)
REPORT_SECONDS = 0.25


def _report(conn: Connection, stop: threading.Event, lock: threading.Lock) -> None:
    last: dict = {}
    while not stop.wait(REPORT_SECONDS):
        now = counter_snapshot()
        if now != last:
            try:
                with lock:
                    conn.send(("counters", now))
            except OSError:
                os._exit(1)
            last = now


def _memoize_uid_validity() -> None:
    """pynetdicom checks ``UID.is_valid`` (a regular expression) for every UID of every
    A-ASSOCIATE-RQ: ~3 ms per association when a sender proposes every storage SOP class.
    The answer depends on the string alone, so this process remembers it."""
    valid = functools.lru_cache(maxsize=8192)(
        lambda value: len(value) <= 64 and re.match(pydicom.uid.RE_VALID_UID, value) is not None
    )
    pydicom.uid.UID.is_valid = property(lambda self: valid(str(self)))  # type: ignore[method-assign,assignment]


def main(argv: list[str]) -> int:
    conn = Connection(int(argv[0]))
    listen = socket.socket(fileno=int(argv[1]))
    settings: WorkerSettings = conn.recv()
    trust = settings.trust
    # the shared log set-up also turns pydicom's value validation off: the SCP never
    # interprets values (it keeps bytes; the anonymiser validates), the warnings quote them,
    # and the regex validation of every UID in an A-ASSOCIATE-RQ costs ~5 ms per association
    logs.setup(f"receiver/w{settings.index}", settings.log_level, trust=trust.code)
    _memoize_uid_validity()
    spool = Spool(settings.spool_root, durable_commits=False)
    scp = StoreSCP(trust, spool, settings.key)
    freeze_startup_objects()
    scp.start(listen)
    lock = threading.Lock()
    with lock:
        conn.send(("ready", os.getpid()))
    stop = threading.Event()
    reporter = threading.Thread(target=_report, args=(conn, stop, lock), daemon=True)
    reporter.start()
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            # the receiver process is gone: acknowledge nothing more, at once
            os._exit(1)
        if message and message[0] == "pace":  # intake pacing (``pace.py``), from the relay
            scp.pace = float(message[1])
            continue
        break
    grace = float(message[1]) if message and message[0] == "stop" else 0.0
    scp.stop(grace)
    stop.set()
    reporter.join(2)
    try:
        with lock:
            conn.send(("counters", counter_snapshot()))
    except OSError:
        pass
    spool.close()
    conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
