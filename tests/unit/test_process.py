"""The long-running processes freeze what they set up, and still collect what comes after."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import gc, weakref
from smartbox.process import freeze_startup_objects

class Node:
    pass

startup = [Node() for _ in range(1000)]
freeze_startup_objects()
assert gc.get_freeze_count() >= 1000, gc.get_freeze_count()

a, b = Node(), Node()
a.other, b.other = b, a  # a cycle made after start-up
gone = weakref.ref(a)
del a, b
gc.collect()
assert gone() is None, "a cycle made after the freeze is still collected"
print("ok")
"""


def test_startup_objects_are_frozen_and_later_cycles_collected() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
