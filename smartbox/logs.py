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
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import traceback
import warnings
from types import TracebackType

from .errors import SmartboxError

#: Loggers whose text may quote DICOM element values: only their location is logged.
THIRD_PARTY = ("pydicom", "pynetdicom", "py.warnings")
WITHHELD = "(text withheld: it may quote DICOM element values)"
_SAFE = "smartbox_safe_text"
_ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


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


def setup(role: str, level: str | None = None) -> None:
    """Configure logging for a smartbox process (see the module docstring)."""
    lvl = (level or os.environ.get("SMARTBOX_LOG_LEVEL", "INFO")).upper()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(SafeFormatter(f"%(asctime)s %(levelname)s {role} %(name)s: %(message)s"))
    handler.addFilter(ThirdPartyText())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(lvl)
    # pika and pynetdicom are chatty at INFO and pynetdicom logs dataset contents at DEBUG
    for noisy in ("pika", "pynetdicom", "urllib3", "pydicom"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    warnings.showwarning = _show_warning
    quiet_pydicom()
