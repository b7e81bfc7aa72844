"""A-ASSOCIATE on the acceptor side (PS3.8 9.3.2-9.3.4): the A-ASSOCIATE-RQ parsed, the
presentation contexts negotiated, the A-ASSOCIATE-AC and -RJ encoded, without pynetdicom.

Why our own: through pynetdicom, an RQ of ~120 presentation contexts (what dcmtk's storescu
proposes for every file it sends) cost ~7 ms of CPU per association to decode into objects,
negotiate and encode back (bench/receiver/RESULTS.md). A sender proposes the same set every
time, so everything after the fixed 68-byte header is looked up in a bounded LRU cache keyed
by those exact bytes; then by the proposal set (contexts and role items), which also serves
peers whose user information differs. A hit costs the header parse and one hash; only the AE
titles, echoed in the AC's fixed header, vary per association. Screening the AE titles
stays per association (``scp.StoreSCP.screen``): the cache holds negotiation, never a verdict.

Negotiation is pynetdicom 3.0's ``negotiate_as_acceptor`` for an acceptor that states no
SCP/SCU roles (ours never does): per proposed context, the first of our transfer syntaxes the
peer offers (result 0), else 4 (transfer syntaxes not supported) or 3 (abstract syntax not
supported), echoing the peer's first transfer syntax; results in context-id order; a
(context id, abstract syntax) pair proposed twice counts once, with its last transfer
syntaxes; role selection items are read and answered with none (we are SCP by default).
``tests/unit/test_receiver_associate.py`` holds this to pynetdicom's bytes for many proposals.

Strict bounds: every item's length must fit in its parent; unknown item types, a missing
abstract or transfer syntax, an even context id or a UID that is not 1-64 printable ASCII
characters are a ``ValueError`` (the caller answers A-ABORT), whose text never quotes the
peer's bytes. Nothing is allocated beyond what arrived.
"""

from __future__ import annotations

import re
import struct
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from .status import Rejection

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
CACHE_ENTRIES = 64  # distinct proposals kept per acceptor: a trust has a few senders
# an RQ's variable items above this are answered but not cached: 64 entries of an RQ as large
# as the upper layer admits (1 MiB) would hold a worker's memory hostage; storescu's are ~10 KiB
CACHE_MAX_RQ_BYTES = 64 << 10

_UID_CHARS = re.compile(rb"[!-\[\]-~]{1,64}")  # printable ASCII but space and backslash
_AE_CHARS = re.compile(rb"[ -\[\]-~]{16}")  # the same, spaces allowed
_ITEM = struct.Struct(">BxH")
_FIXED = struct.Struct(">Hxx16s16s32x")  # after the 6-byte PDU header: 68 bytes
_UINT4 = struct.Struct(">I")
_UINT2 = struct.Struct(">H")
_AC_FIXED = struct.Struct(">BxIHxx16s16s32x")

# (context id, abstract syntax, transfer syntaxes) as proposed, in order
Proposal = tuple[tuple[int, str, tuple[str, ...]], ...]
# (SOP class UID, SCU role, SCP role) from SCP/SCU role selection items, in order
Roles = tuple[tuple[str, int, int], ...]
# accepted context id -> (abstract syntax, transfer syntax)
Contexts = dict[int, tuple[str, str]]

K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True)
class Proposed:
    """What varies from one sender to another, never from one association to the next of the
    same sender: everything in an A-ASSOCIATE-RQ after its fixed header."""

    application_context: str
    contexts: Proposal
    roles: Roles
    max_pdu: int  # the peer's maximum PDU length; 0: none stated (unlimited)


@dataclass(frozen=True)
class AssociateRequest:
    """One A-ASSOCIATE-RQ: its fixed header, and what it proposes (shared between requests)."""

    protocol_version: int
    calling_ae: str
    called_ae: str
    proposed: Proposed
    # the RQ's bytes after its fixed header (the cache key), and what they were answered
    # the last time they were accepted (AC items, accepted contexts), if they were
    items: bytes = field(repr=False, compare=False, default=b"")
    answered: tuple[bytes, Contexts] | None = field(repr=False, compare=False, default=None)

    @property
    def application_context(self) -> str:
        return self.proposed.application_context


def _items(data: bytes, start: int, end: int, what: str) -> Iterator[tuple[int, int, int]]:
    """(item type, value start, value end) of the items filling ``data[start:end]`` exactly."""
    pos = start
    while pos < end:
        if pos + 4 > end:
            raise ValueError(f"truncated {what} item header")
        kind, length = _ITEM.unpack_from(data, pos)
        if pos + 4 + length > end:
            raise ValueError(f"{what} item (type 0x{kind:02X}) overruns its parent")
        yield kind, pos + 4, pos + 4 + length
        pos += 4 + length


def _uid(data: bytes, start: int, end: int, what: str) -> str:
    """A UID as pynetdicom reads it (one trailing NUL and surrounding spaces dropped), held to
    1-64 printable ASCII characters."""
    raw = data[start:end]
    if raw[-1:] == b"\x00":
        raw = raw[:-1]
    raw = raw.strip(b" ")
    if _UID_CHARS.fullmatch(raw) is None:
        raise ValueError(f"invalid {what} UID")
    return raw.decode("ascii")


def _ae_title(raw: bytes, what: str) -> str:
    """An AE title: ASCII without control characters or backslashes, not all spaces."""
    if _AE_CHARS.fullmatch(raw) is None:
        raise ValueError(f"invalid {what} AE title")
    title = raw.decode("ascii").strip()
    if not title:
        raise ValueError(f"empty {what} AE title")
    return title


def _presentation_context(data: bytes, start: int, end: int) -> tuple[int, str, tuple[str, ...]]:
    if end - start < 4:
        raise ValueError("truncated presentation context item")
    context_id = data[start]
    if context_id % 2 == 0:  # odd, 1-255 (PS3.8 9.3.2.2)
        raise ValueError("even presentation context id")
    abstract: str | None = None
    syntaxes: list[str] = []
    for kind, lo, hi in _items(data, start + 4, end, "presentation context sub-"):
        if kind == 0x30 and abstract is None:
            abstract = _uid(data, lo, hi, "abstract syntax")
        elif kind == 0x40:
            syntaxes.append(_uid(data, lo, hi, "transfer syntax"))
        else:
            raise ValueError(f"unexpected presentation context sub-item 0x{kind:02X}")
    if abstract is None or not syntaxes:
        raise ValueError("presentation context without abstract or transfer syntax")
    return context_id, abstract, tuple(syntaxes)


def _user_information(data: bytes, start: int, end: int) -> tuple[int, Roles]:
    max_pdu: int | None = None
    roles: list[tuple[str, int, int]] = []
    for kind, lo, hi in _items(data, start, end, "user information sub-"):
        if kind == 0x51:  # maximum length
            if hi - lo != 4:
                raise ValueError("maximum length sub-item is not 4 bytes")
            if max_pdu is None:  # the first counts, as in pynetdicom
                max_pdu = _UINT4.unpack_from(data, lo)[0]
        elif kind == 0x52:  # implementation class UID: not used, but must be one
            _uid(data, lo, hi, "implementation class")
        elif kind == 0x53:  # asynchronous operations window: not negotiated (not answered)
            if hi - lo != 4:
                raise ValueError("asynchronous operations window sub-item is not 4 bytes")
        elif kind == 0x54:  # SCP/SCU role selection
            if hi - lo < 2:
                raise ValueError("truncated role selection sub-item")
            uid_end = lo + 2 + _UINT2.unpack_from(data, lo)[0]
            if uid_end + 2 != hi:
                raise ValueError("role selection sub-item length mismatch")
            scu, scp = data[uid_end], data[uid_end + 1]
            if scu > 1 or scp > 1:
                raise ValueError("role selection value other than 0 or 1")
            roles.append((_uid(data, lo + 2, uid_end, "role selection SOP class"), scu, scp))
        elif kind in (0x55, 0x56, 0x57, 0x58):
            pass  # version name, extended negotiation, user identity: ignored (PS3.7 D.3.3)
        else:
            raise ValueError(f"unexpected user information sub-item 0x{kind:02X}")
    return max_pdu or 0, tuple(roles)


def parse_proposed(data: bytes) -> Proposed:
    """The variable items of an A-ASSOCIATE-RQ (``data``: all of them, nothing else)."""
    application_context = ""  # none: the caller rejects it as an unsupported context
    contexts: list[tuple[int, str, tuple[str, ...]]] = []
    user_information: tuple[int, Roles] | None = None
    for kind, lo, hi in _items(data, 0, len(data), "A-ASSOCIATE-RQ"):
        if kind == 0x10:
            if application_context:
                raise ValueError("second application context item")
            application_context = _uid(data, lo, hi, "application context")
        elif kind == 0x20:
            contexts.append(_presentation_context(data, lo, hi))
        elif kind == 0x50:
            if user_information is not None:
                raise ValueError("second user information item")
            user_information = _user_information(data, lo, hi)
        else:
            raise ValueError(f"unexpected A-ASSOCIATE-RQ item 0x{kind:02X}")
    max_pdu, roles = user_information or (0, ())
    return Proposed(application_context, tuple(contexts), roles, max_pdu)


class _LRU(Generic[K, V]):
    """A bounded, thread-safe least-recently-used map (associations run in threads)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.hits = self.misses = 0
        self._data: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._data.get(key)
            if value is None:
                self.misses += 1
            else:
                self.hits += 1
                self._data.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


def _item(kind: int, value: bytes) -> bytes:
    return _ITEM.pack(kind, len(value)) + value


def encode_associate_rj(rejection: Rejection) -> bytes:
    """An A-ASSOCIATE-RJ PDU (PS3.8 9.3.4)."""
    result, source, diagnostic = rejection
    return bytes([0x03, 0, 0, 0, 0, 4, 0, result, source, diagnostic])


class Acceptor:
    """What we accept (abstract syntax -> our transfer syntaxes, in preference order) and
    state about ourselves in an A-ASSOCIATE-AC; negotiates and encodes, with its caches."""

    def __init__(
        self,
        supported: Sequence[tuple[str, Sequence[str]]],
        *,
        max_pdu: int,
        implementation_uid: str,
        implementation_version: str,
        cache_entries: int = CACHE_ENTRIES,
    ) -> None:
        self.supported = {abstract: tuple(syntaxes) for abstract, syntaxes in supported}
        if len(self.supported) != len(supported):
            raise ValueError("an abstract syntax is supported twice")
        user = (
            _item(0x51, _UINT4.pack(max_pdu))
            + _item(0x52, implementation_uid.encode("ascii"))
            + _item(0x55, implementation_version.encode("ascii"))
        )
        self._user_information = _item(0x50, user)
        self._application_context = _item(0x10, APPLICATION_CONTEXT.encode("ascii"))
        # exact bytes after the RQ's fixed header -> (what they propose, AC items, accepted)
        self.by_bytes: _LRU[bytes, tuple[Proposed, bytes, Contexts]] = _LRU(cache_entries)
        # the proposal set (contexts, role items) -> (AC items, accepted); what we accept is
        # this acceptor's, fixed for its life, so it is no part of the key
        self.by_proposal: _LRU[tuple[Proposal, Roles], tuple[bytes, Contexts]] = _LRU(cache_entries)

    def parse(self, pdu: bytes) -> AssociateRequest:
        """A whole A-ASSOCIATE-RQ PDU (header included); ValueError if malformed."""
        if len(pdu) < 74 or pdu[0] != 0x01 or _UINT4.unpack_from(pdu, 2)[0] != len(pdu) - 6:
            raise ValueError("truncated A-ASSOCIATE-RQ")
        version, called, calling = _FIXED.unpack_from(pdu, 6)
        called_ae, calling_ae = _ae_title(called, "called"), _ae_title(calling, "calling")
        key = pdu[74:]
        cached = self.by_bytes.get(key)
        if cached is None:
            return AssociateRequest(version, calling_ae, called_ae, parse_proposed(key), key)
        proposed, items, contexts = cached
        return AssociateRequest(version, calling_ae, called_ae, proposed, key, (items, contexts))

    def accept(self, request: AssociateRequest) -> tuple[bytes, Contexts]:
        """The A-ASSOCIATE-AC PDU for ``request`` and the contexts it accepts."""
        if request.answered is None:
            items, contexts = self._negotiate(request.proposed, len(request.items))
            if len(request.items) <= CACHE_MAX_RQ_BYTES:
                self.by_bytes.put(request.items, (request.proposed, items, contexts))
        else:
            items, contexts = request.answered
        called = request.called_ae.encode("ascii").ljust(16)
        calling = request.calling_ae.encode("ascii").ljust(16)
        header = _AC_FIXED.pack(0x02, 68 + len(items), 0x0001, called, calling)
        return header + items, dict(contexts)

    def _negotiate(self, proposed: Proposed, size: int) -> tuple[bytes, Contexts]:
        key = (proposed.contexts, proposed.roles)
        cached = self.by_proposal.get(key)
        if cached is not None:
            return cached
        # a (context id, abstract syntax) proposed twice: the first place, the last syntaxes
        unique: dict[tuple[int, str], tuple[str, ...]] = {}
        for context_id, abstract, syntaxes in proposed.contexts:
            unique[(context_id, abstract)] = syntaxes
        results: list[tuple[int, int, str]] = []  # (context id, result, transfer syntax)
        contexts: Contexts = {}
        for (context_id, abstract), syntaxes in unique.items():
            ours = self.supported.get(abstract)
            if ours is None:
                results.append((context_id, 0x03, syntaxes[0]))
                continue
            chosen = next((ts for ts in ours if ts in syntaxes), None)
            if chosen is None:
                results.append((context_id, 0x04, syntaxes[0]))
            else:
                results.append((context_id, 0x00, chosen))
                contexts[context_id] = (abstract, chosen)
        results.sort(key=lambda result: result[0])  # stable, as pynetdicom's
        items = self._application_context + b"".join(
            _item(0x21, bytes([context_id, 0, result, 0]) + _item(0x40, ts.encode("ascii")))
            for context_id, result, ts in results
        )
        entry = (items + self._user_information, contexts)
        if size <= CACHE_MAX_RQ_BYTES:
            self.by_proposal.put(key, entry)
        return entry
