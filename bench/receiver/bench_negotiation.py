"""CPU per association spent on A-ASSOCIATE: pynetdicom's path against ``associate.py``.

    .venv/bin/python bench/receiver/bench_negotiation.py [--n 200] [--markdown]

The A-ASSOCIATE-RQ is captured from a real dcmtk storescu sending one CT file (its default
proposal: ~128 presentation contexts) and, for contrast, encoded by pynetdicom for one context.
Each is answered ``--n`` times by: **pynetdicom** (decode the RQ, ``negotiate_as_acceptor``,
encode the AC: what the receiver did until issue 11 item 5, kept as the tests' reference in
``tests/helpers/pynetdicom_reference.py``); **ours, cold** (a new ``Acceptor`` each time:
parse, negotiate, encode, nothing cached); **ours, same proposal** (the RQ bytes cache cleared
each time, the proposal-set cache warm: another sender's user information); **ours, cached**
(the same sender again: what a sender's second association costs). Thread CPU time, best of
``--n`` (the minimum is what load on a shared machine disturbs least), and the median.
"""

from __future__ import annotations

import argparse
import logging
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from helpers import pynetdicom_reference as reference  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402

from producers.receiver import dimse, scp  # noqa: E402
from producers.receiver.associate import Acceptor  # noqa: E402

MAX_PDU = 131072


def storescu_rq() -> bytes:
    """The A-ASSOCIATE-RQ of ``storescu`` sending one CT file (answered with A-ABORT)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        cmd = ["storescu", "-aet", "BENCH_SCU", "-aec", "SMARTBOX", "127.0.0.1"]
        cmd += [str(server.getsockname()[1]), get_testdata_file("CT_small.dcm")]
        sender = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        conn, _ = server.accept()
        with conn:
            conn.settimeout(30)
            pdu = b""
            while len(pdu) < 6 or len(pdu) < 6 + struct.unpack_from(">I", pdu, 2)[0]:
                pdu += conn.recv(65536)
            conn.sendall(b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00")
        sender.wait(30)
    return pdu


def pynetdicom_rq() -> bytes:
    """A pynetdicom SCU's A-ASSOCIATE-RQ for CT Image Storage, explicit VR little endian."""
    from pynetdicom.pdu import A_ASSOCIATE_RQ
    from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
    from pynetdicom.presentation import build_context

    rq = A_ASSOCIATE()
    rq.application_context_name = reference.APPLICATION_CONTEXT
    rq.calling_ae_title, rq.called_ae_title = "BENCH_SCU", "SMARTBOX"
    context = build_context("1.2.840.10008.5.1.4.1.1.2", ["1.2.840.10008.1.2.1"])
    context.context_id = 1
    rq.presentation_context_definition_list = [context]
    length = MaximumLengthNotification()
    length.maximum_length_received = 16384
    rq.user_information = [length]
    return bytes(A_ASSOCIATE_RQ(rq).encode())


def acceptor() -> Acceptor:
    return Acceptor(
        scp.supported_contexts(),
        max_pdu=MAX_PDU,
        implementation_uid=dimse.IMPLEMENTATION_UID,
        implementation_version=dimse.IMPLEMENTATION_VERSION,
    )


def timed(fn: Callable[[], object], n: int) -> tuple[float, float]:
    """(best, median) thread CPU milliseconds of ``fn`` over ``n`` calls."""
    fn()  # warm
    samples = []
    for _ in range(n):
        start = time.thread_time()
        fn()
        samples.append((time.thread_time() - start) * 1000)
    return min(samples), statistics.median(samples)


def paths(pdu: bytes) -> dict[str, Callable[[], object]]:
    supported = reference.supported_contexts(scp.supported_contexts())

    def old() -> object:
        request = reference.decode_associate_rq(pdu)
        return reference.encode_associate_ac(
            request,
            supported,
            max_pdu=MAX_PDU,
            implementation_uid=dimse.IMPLEMENTATION_UID,
            implementation_version=dimse.IMPLEMENTATION_VERSION,
        )

    def cold() -> object:
        ours = acceptor()
        return ours.accept(ours.parse(pdu))

    warm = acceptor()

    def same_proposal() -> object:
        warm.by_bytes = type(warm.by_bytes)(warm.by_bytes.size)
        return warm.accept(warm.parse(pdu))

    cached = acceptor()

    def hit() -> object:
        return cached.accept(cached.parse(pdu))

    assert old() == (*cold(), reference.decode_associate_rq(pdu).primitive.maximum_length_received)
    return {
        "pynetdicom": old,
        "ours, cold": cold,
        "ours, same proposal": same_proposal,
        "ours, cached": hit,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    rqs = {"storescu (one file)": storescu_rq(), "pynetdicom SCU (1 context)": pynetdicom_rq()}
    rows = []
    for name, pdu in rqs.items():
        contexts = len(acceptor().parse(pdu).proposed.contexts)
        for path, fn in paths(pdu).items():
            best, median = timed(fn, args.n)
            rows.append((f"{name}: {contexts} contexts, {len(pdu)} bytes", path, best, median))
    if args.markdown:
        print("| A-ASSOCIATE-RQ | path | CPU ms, best | median |")
        print("|---|---|---|---|")
        for rq, path, best, median in rows:
            print(f"| {rq} | {path} | {best:.3f} | {median:.3f} |")
    else:
        for rq, path, best, median in rows:
            print(f"{rq:45} {path:22} best {best:8.3f} ms  median {median:8.3f} ms")


if __name__ == "__main__":
    main()
