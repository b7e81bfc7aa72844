"""Process-wide settings of the long-running processes."""

from __future__ import annotations

import gc


def freeze_startup_objects() -> None:
    """Put every object made so far (modules, pydicom's dictionaries, the policy, tables)
    beyond the cyclic collector's reach, once a process has set itself up.

    They live as long as the process, yet each full collection walked all of them again:
    in a receiver worker under four associations the collector was ~5 % of its CPU
    (``gc_collect_main``, ``visit_reachable``, ``visit_decref`` in ``perf``, 2026-12-01).
    What is allocated afterwards is collected as before. Before a fork it also keeps the
    children's collections from writing to (and so copying) every inherited page."""
    gc.collect()
    gc.freeze()
