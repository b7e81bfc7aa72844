"""``smartbox trust add``: scaffold a trust file, validate it as the receiver will, and say what
to give the trust.

The file is checked before it is written (the receiver's own parser, ``config.parse_trust``)
and again after (``config.load_trust`` and ``config.load_all_trusts``, exactly what
``smartbox receive`` and the consumers run at start), so a file this command leaves behind
always starts a receiver. It never overwrites a trust file and never reuses another trust's
port or AE title: two receivers on one port, or two trusts behind one AE title, would mix
trusts' data.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from smartbox.errors import ConfigError

if TYPE_CHECKING:
    from smartbox.settings import Settings
    from smartbox.trusts import TrustConfig

FIRST_PORT = 11112  # the registered DICOM port; trusts get it and the ports after it


class _OneLineParser(argparse.ArgumentParser):
    """Usage mistakes as one line and exit 2, like every other operator error."""

    def error(self, message: str) -> NoReturn:
        print(
            f"smartbox: error: trust add: {message} (see smartbox trust add --help)",
            file=sys.stderr,
        )
        raise SystemExit(2)


@dataclass(frozen=True)
class NewTrust:
    code: str
    name: str
    ae_title: str
    port: int
    callers: tuple[str, ...]
    networks: tuple[str, ...] = ()
    nhs_number_attribute: str = "PatientID"


def _q(value: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(value, ensure_ascii=False)


def _list(values: tuple[str, ...]) -> str:
    return "[" + ", ".join(_q(v) for v in values) + "]"


def render(trust: NewTrust) -> str:
    """The trust file's text: what was asked, and the usual knobs commented out."""
    networks = (
        f"allowed_networks = {_list(trust.networks)}"
        if trust.networks
        else '# allowed_networks = ["10.20.0.0/16"]  # the PACS addresses; empty: any'
    )
    return "\n".join(
        [
            f"# {trust.name}: written by `smartbox trust add`. One file per trust; the file",
            "# name is the trust code. No secrets here. Reference: docs/operations.md.",
            f"code = {_q(trust.code)}",
            f"name = {_q(trust.name)}",
            f"ae_title = {_q(trust.ae_title)}",
            f"port = {trust.port}",
            f"allowed_callers = {_list(trust.callers)}",
            networks,
            f"nhs_number_attribute = {_q(trust.nhs_number_attribute)}",
            "quiet_seconds = 60",
            "max_wait_seconds = 3600",
            "",
            "# [deidentification]",
            '# options = ["retain_longitudinal_modified_dates", "retain_patient_characteristics"]',
            "",
        ]
    )


def next_free_port(used: set[int], first: int = FIRST_PORT) -> int:
    """The lowest port from ``first`` that no trust file uses."""
    port = first
    while port in used:
        port += 1
    if port > 65535:
        raise ConfigError("no free port left for a new trust")
    return port


def _existing(trusts_dir: Path) -> dict[str, TrustConfig]:
    from smartbox.trusts import load_all_trusts

    return load_all_trusts(trusts_dir) if trusts_dir.is_dir() else {}


def add_trust(trusts_dir: Path, trust: NewTrust) -> tuple[Path, TrustConfig]:
    """Validate and write ``trusts_dir/<CODE>.toml``; ConfigError (nothing written) if the
    trust exists, its port or AE title is taken, or the receiver would reject the file."""
    from smartbox.trusts import TRUST_CODE_RE, load_all_trusts, load_trust, parse_trust

    if not TRUST_CODE_RE.match(trust.code):
        raise ConfigError(f"trust code {trust.code!r}: 2-8 upper-case letters or digits")
    if not 1 <= trust.port <= 65535:
        raise ConfigError(f"port {trust.port}: a fixed port 1-65535, to give to the trust")
    path = trusts_dir / f"{trust.code}.toml"
    if path.exists():
        raise ConfigError(f"{path} exists: trust {trust.code} is already configured")
    existing = _existing(trusts_dir)  # an invalid existing file stops here, named
    for other in existing.values():
        if other.port == trust.port:
            raise ConfigError(f"port {trust.port} is already used by {other.source_file}")
        if other.ae_title.strip() == trust.ae_title.strip():
            raise ConfigError(f"AE title {trust.ae_title} is already used by {other.source_file}")
    text = render(trust)
    parse_trust(path, tomllib.loads(text))  # the receiver's checks, before anything is written
    trusts_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise ConfigError(f"{path} exists: trust {trust.code} is already configured") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be written: {exc.strerror}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    try:
        loaded = load_trust(trusts_dir, trust.code)
        load_all_trusts(trusts_dir)
    except ConfigError:
        path.unlink(missing_ok=True)
        raise
    return path, loaded


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``smartbox trust add``."""
    p = sub.add_parser("trust", help="manage trust files (add)")
    actions = p.add_subparsers(
        dest="trust_action", metavar="ACTION", required=True, parser_class=_OneLineParser
    )
    a = actions.add_parser(
        "add",
        help="scaffold and validate a new trust file; print what to give the trust",
        description="Write $SMARTBOX_TRUSTS_DIR/CODE.toml for a new trust, validated with the "
        "receiver's own loader, and print the AE title, host and port to configure in the "
        "trust's PACS. Refuses to overwrite a trust or reuse another trust's port or AE title. "
        "Exit 0: written; 2: nothing written (the reason in one line).",
    )
    a.add_argument("code", help="trust code, 2-8 upper-case letters or digits (e.g. RGT)")
    a.add_argument("--name", required=True, help="the trust's name, as in reports")
    a.add_argument(
        "--caller",
        action="append",
        required=True,
        metavar="AE",
        help="calling AE title of the trust's PACS (repeat for several)",
    )
    a.add_argument(
        "--network",
        action="append",
        default=[],
        metavar="CIDR",
        help="source address or range the PACS calls from (repeat; default any)",
    )
    a.add_argument("--ae-title", default=None, help="our AE title (default SMARTBOX_<CODE>)")
    a.add_argument(
        "--port",
        type=int,
        default=None,
        help=f"DICOM port (default: the first from {FIRST_PORT} no trust file uses)",
    )
    a.add_argument(
        "--nhs-number-attribute",
        default="PatientID",
        help="attribute holding the NHS number (default %(default)s)",
    )
    a.add_argument(
        "--host",
        default=None,
        help="address the trust's PACS reaches this box at (default: this host's "
        "fully qualified name)",
    )
    a.add_argument("--trusts-dir", default=None, help="default $SMARTBOX_TRUSTS_DIR")


def main(args: argparse.Namespace, settings: Settings) -> int:
    """Run ``smartbox trust ACTION``."""
    trusts_dir = Path(args.trusts_dir) if args.trusts_dir else settings.trusts_dir
    code = args.code
    port = args.port
    if port is None:
        port = next_free_port({t.port for t in _existing(trusts_dir).values() if t.port})
    new = NewTrust(
        code=code,
        name=args.name,
        ae_title=args.ae_title or f"SMARTBOX_{code}",
        port=port,
        callers=tuple(args.caller),
        networks=tuple(args.network),
        nhs_number_attribute=args.nhs_number_attribute,
    )
    path, trust = add_trust(trusts_dir, new)
    host = args.host or socket.getfqdn()
    print(f"created {path}")
    print(f"give {trust.name} these details for its PACS:")
    print(f"  AE title: {trust.ae_title}")
    print(f"  host:     {host}")
    print(f"  port:     {trust.port}")
    print(f"  calling AE title(s) we accept: {', '.join(trust.allowed_callers)}")
    print(f"then start its receiver: smartbox receive --trust {trust.code}")
    return 0
