"""The DICOM receiver (one process per trust): SCP, spool, outbox relay."""

from .relay import Relay, quarantine_key
from .scp import StoreSCP
from .service import ReceiverService
from .spool import Spool

__all__ = ["ReceiverService", "Relay", "Spool", "StoreSCP", "quarantine_key"]
