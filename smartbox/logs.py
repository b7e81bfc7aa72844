"""Logging set-up for every smartbox process: one line per event, and no patient data.

Our own log calls carry opaque ids (study keys, message ids), trust codes and counts only:
a rule enforced in review and by the end-to-end tests that scan every process's log for
planted identifiers, malformed input included. What we do not write ourselves is made safe
here, once, for every process (``setup``: receiver and its SCP workers, anonymiser, exporter,
ingest, the demo and every CLI command including ``smartbox deidentify``):

* pydicom validates values as it reads and writes them, and its warnings quote the value
  (a name in a DA, an NHS number in an over-long LO): both validation modes are IGNORE.
  Nothing relies on them: the SCP keeps bytes, the de-identifier decides what it keeps and
  its verification gate checks the written bytes. Without them reading is also faster;
* what pydicom, pynetdicom or the ``warnings`` module still say is logged without its text:
  logger, level, source location and warning category only (``ThirdPartyText``);
* exception tracebacks keep their frames and exception class, but the message only for
  smartbox's own errors (they never carry patient data) and the errno and strerror of
  ``OSError`` (not its file name) (``SafeFormatter``).

Lines are JSON objects (``JsonFormatter``: timestamp, level, process, trust, correlation_id,
message_id, logger, message, exception) or plain text, by ``SMARTBOX_LOG_FORMAT`` (``json`` |
``text``; default: text when stderr is a terminal, else JSON, so daemons under systemd,
compose or Kubernetes write JSON and an operator at a shell reads text). The trust and the
envelope ids come from ``context``: the consumer loop binds them for every delivery it
handles, the receiver's relay for every study it announces, so one study's correlation id
is on its lines from ``study.arrived`` to the export receipt.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
import threading
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, TypeVar

from .errors import ConfigError, SmartboxError

#: Loggers whose text may quote DICOM element values: only their location is logged.
THIRD_PARTY = ("pydicom", "pynetdicom", "py.warnings")
WITHHELD = "(text withheld: it may quote DICOM element values)"
_SAFE = "smartbox_safe_text"
_ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
_T = TypeVar("_T")
FORMATS = ("json", "text")
#: the fields every line carries (None when unknown), besides the message
CONTEXT_FIELDS = ("trust", "correlation_id", "message_id")
_context: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar(
    "smartbox_log_context", default=None
)
#: what is true for the whole process: its role and, for a receiver, its trust
_process: dict[str, str] = {}


def _third_party(name: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in THIRD_PARTY)


def exception_text(exc: BaseException) -> str:
    """``Class: message`` for smartbox's own errors, ``Class: [Errno n] strerror`` for an
    OSError, and the class alone for anything else (its message may quote input values)."""
    name = type(exc).__name__
    if isinstance(exc, SmartboxError):
        return f"{name}: {exc}"
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{name}: [Errno {exc.errno}] {exc.strerror}"
    return f"{name} {WITHHELD}"


class ThirdPartyText(logging.Filter):
    """Replaces the text of third-party records (``THIRD_PARTY``) with their location."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _third_party(record.name) and not getattr(record, _SAFE, False):
            record.msg = f"{os.path.basename(record.pathname)}:{record.lineno} {WITHHELD}"
            record.args = None
            record.stack_info = None
        return True


class SafeFormatter(logging.Formatter):
    """A formatter whose tracebacks never carry an exception's message (``exception_text``)."""

    def formatException(self, ei: _ExcInfo | tuple[None, None, None]) -> str:  # noqa: N802
        exc = ei[1]
        chain: list[BaseException] = []
        while exc is not None and all(exc is not seen for seen in chain):
            chain.append(exc)
            exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
        parts: list[str] = []
        for n, item in enumerate(reversed(chain)):
            if n:
                parts.append("\nwhich led to:\n")
            parts.append("Traceback (most recent call last):\n")
            parts.extend(traceback.format_tb(item.__traceback__))
            parts.append(exception_text(item))
        return "".join(parts)


_seen_warnings: set[tuple[str, str, int]] = set()
_warnings_lock = threading.Lock()


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: object = None,
    line: str | None = None,
) -> None:
    """``warnings.showwarning`` for smartbox processes: category and location, once per
    location, never the text."""
    where = (category.__name__, filename, lineno)
    with _warnings_lock:
        if where in _seen_warnings or len(_seen_warnings) > 10_000:
            return
        _seen_warnings.add(where)
    logging.getLogger("py.warnings").warning(
        "%s at %s:%d %s (further ones there not logged)",
        category.__name__,
        os.path.basename(filename),
        lineno,
        WITHHELD,
        extra={_SAFE: True},
    )


def quiet_pydicom() -> None:
    """pydicom neither validates nor warns about values as it reads or writes them."""
    import pydicom.config

    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE


@contextmanager
def context(**fields: str | None) -> Iterator[None]:
    """Put ``fields`` (``CONTEXT_FIELDS``: opaque ids and the trust code, never patient
    data) on every record logged inside, in this thread (a ``contextvars`` context)."""
    merged = {**(_context.get() or {}), **{k: v for k, v in fields.items() if v is not None}}
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)


def message_context(message: Mapping[str, Any]) -> AbstractContextManager[None]:
    """``context`` of an envelope: its trust, correlation id and message id."""
    return context(
        trust=_str(message.get("trust")),
        correlation_id=_str(message.get("correlation_id")),
        message_id=_str(message.get("message_id")),
    )


def carry(fn: Callable[..., _T]) -> Callable[..., _T]:
    """``fn`` to run in a worker thread with the caller's log context (a thread pool does
    not pass contextvars on by itself)."""
    ctx = contextvars.copy_context()
    return lambda *args: ctx.copy().run(fn, *args)


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


class ContextFilter(logging.Filter):
    """Copies the process's and the current context's fields onto each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = {**_process, **(_context.get() or {})}
        record.process_role = fields.get("process", "")
        for name in CONTEXT_FIELDS:
            setattr(record, name, fields.get(name))
        return True


class JsonFormatter(SafeFormatter):
    """One JSON object per line. Non-ASCII stays as it is (``ensure_ascii=False``), so a
    log scan for a value finds it exactly as written; tracebacks as ``SafeFormatter``."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC)
        line: dict[str, Any] = {
            "timestamp": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "process": getattr(record, "process_role", ""),
            **{name: getattr(record, name, None) for name in CONTEXT_FIELDS},
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(SafeFormatter):
    """``time LEVEL process logger: message [correlation ID]`` for a person at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        correlation = getattr(record, "correlation_id", None)
        if not correlation:
            return text
        head, _, tail = text.partition("\n")
        return f"{head} [correlation {correlation}]" + (f"\n{tail}" if tail else "")


def log_format(value: str | None = None) -> str:
    """``SMARTBOX_LOG_FORMAT`` checked (``ConfigError``, one line), or the default for this
    stderr: text on a terminal, JSON otherwise."""
    raw = os.environ.get("SMARTBOX_LOG_FORMAT", "") if value is None else value
    name = raw.strip().lower()
    if not name:
        return "text" if sys.stderr.isatty() else "json"
    if name not in FORMATS:
        raise ConfigError(f"environment: SMARTBOX_LOG_FORMAT {raw!r}: expected json or text")
    return name


def setup(role: str, level: str | None = None, *, trust: str | None = None) -> None:
    """Configure logging for a smartbox process (see the module docstring); ``trust``: the
    trust of a process that serves one (a receiver)."""
    lvl = (level or os.environ.get("SMARTBOX_LOG_LEVEL", "INFO")).upper()
    try:
        fmt = log_format()
    except ConfigError:
        fmt = "json"  # the CLI reports the mistake before it gets here; a worker just logs
    _process.clear()
    _process["process"] = role
    if trust:
        _process["trust"] = trust
    handler = logging.StreamHandler(sys.stderr)
    formatter: logging.Formatter
    if fmt == "json":
        formatter = JsonFormatter()
    else:
        formatter = TextFormatter(
            "%(asctime)s %(levelname)s %(process_role)s %(name)s: %(message)s"
        )
    handler.setFormatter(formatter)
    handler.addFilter(ThirdPartyText())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(lvl)
    # pika and pynetdicom are chatty at INFO and pynetdicom logs dataset contents at DEBUG
    for noisy in ("pika", "pynetdicom", "pydicom"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # urllib3 warns of each retry of an S3 request; smartbox.s3 reports the outcome itself
    # (the error the command ends with, or the stage's own warning), so an operator whose S3
    # is down reads one line that names the endpoint, not a retry trace before it
    logging.getLogger("urllib3").setLevel(max(logging.ERROR, root.level))
    warnings.showwarning = _show_warning
    quiet_pydicom()
