"""Every exception smartbox raises on purpose.

::

    SmartboxError
    ├── ConfigError          bad or missing configuration; the process stops at start
    ├── TransientError       broker or storage unavailable, timeouts: retried with backoff
    └── PermanentError       the input itself is wrong; retrying cannot help
        ├── SchemaError      a message does not match its JSON Schema
        └── NotFound         an object the message points at does not exist

Third-party exceptions (pika, minio, urllib3, OSError) are translated at the adapter edge with
``raise ... from`` so that callers only ever decide between "retry" and "set aside".
Messages never contain patient data: they name buckets, opaque keys, trust codes and fields.
"""

from __future__ import annotations


class SmartboxError(Exception):
    """Base of every smartbox error."""


class ConfigError(SmartboxError):
    """Configuration is missing or invalid; the message names the file and field.

    A message of several lines is several problems, one per line (``smartbox check-config``
    and every process at start report all they find at once)."""


class TransientError(SmartboxError):
    """A dependency is unavailable for now; the operation may succeed if repeated."""


class PermanentError(SmartboxError):
    """The input cannot be processed, however often it is retried."""


class SchemaError(PermanentError):
    """A message does not validate against its schema."""


class NotFound(PermanentError):
    """An object that a message refers to is not in the store."""
