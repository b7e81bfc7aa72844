"""``smartbox dlq list|show|replay|drop ROLE``: dead letters for operators (``smartbox.dlq``).

``list`` and ``drop`` print one line per message (id, schema, trust, reason), never its body;
``show`` prints the whole message (bodies hold opaque keys and counts, no patient data).
``drop`` removes for good: one message by ``--id``, or every message with ``--all --yes``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from smartbox.errors import ConfigError

if TYPE_CHECKING:
    from smartbox.dlq import DeadLetters
    from smartbox.settings import Settings

ROLES = ["anonymiser", "exporter", "national.ingest", "export.receipts"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``smartbox dlq``."""
    p = sub.add_parser("dlq", help="list, show, replay or drop dead-lettered messages of a stage")
    p.add_argument("action", choices=["list", "show", "replay", "drop"])
    p.add_argument("role", choices=ROLES)
    p.add_argument("--id", dest="message_id", help="only this message id (show, replay, drop)")
    p.add_argument("--limit", type=int, default=100, help="messages looked at (default 100)")
    p.add_argument("--all", action="store_true", help="drop: every message of the queue")
    p.add_argument("--yes", action="store_true", help="drop --all: yes, drop them for good")


def main(args: argparse.Namespace, settings: Settings) -> int:
    """Run one ``smartbox dlq`` action; the exit code."""
    from smartbox.dlq import DeadLetters
    from smartbox.topology import Topology

    dlq = DeadLetters(settings.amqp_url, Topology(settings.namespace), args.role)
    if args.action == "drop":
        return _drop(args, dlq)
    if args.action == "replay":
        n = dlq.replay(args.message_id, args.limit)
        print(f"replayed {n} message(s) from {dlq.queue}")
        return 0 if n or args.message_id is None else 1
    letters = dlq.list(args.limit)
    if args.message_id:
        letters = [x for x in letters if x.message_id == args.message_id]
        if not letters:
            print(f"no message {args.message_id} in {dlq.queue}", file=sys.stderr)
            return 1
    if args.action == "show":
        for x in letters:
            print(json.dumps({**x.summary(), "message": json.loads(x.body)}, indent=2))
        return 0
    print(f"{len(letters)} message(s) in {dlq.queue}")
    for x in letters:
        print(x.line())
    return 0


def _drop(args: argparse.Namespace, dlq: DeadLetters) -> int:
    """Drop one dead letter (``--id``) or all (``--all --yes``); print what each one was."""
    if (args.message_id is None) == (not args.all):
        raise ConfigError("dlq drop: give --id MESSAGE_ID, or --all --yes (not both)")
    if args.all and not args.yes:
        raise ConfigError(
            f"dlq drop --all removes every message of {dlq.queue} for good: add --yes "
            "(see them first with smartbox dlq list)"
        )
    letters = dlq.drop(args.message_id, args.limit)
    if args.message_id is not None and not letters:
        print(f"no message {args.message_id} in {dlq.queue}", file=sys.stderr)
        return 1
    print(f"dropped {len(letters)} message(s) from {dlq.queue}")
    for x in letters:
        print(x.line())  # what it was, never its body
    return 0
