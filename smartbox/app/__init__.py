"""The application layer: the composition root of smartbox.

Everything that wires the stages (``producers/``, ``consumers/``) to the plumbing
(``smartbox``'s other modules: configuration, bus, object stores, metrics, logs) lives here,
and only here: the ``smartbox`` command (``cli``), the check every process runs at start
(``preflight``), the one-machine demo (``demo``), the operator commands that read across stages
(``status``, ``probe``, ``report``, ``dlq``, ``trust add``) and the factories both the command
and the demo build their services with (``factories``).

The dependency rule, checked by ``tests/unit/test_layers.py``: the plumbing imports no stage
and nothing of this package; the stages import the plumbing, never this package; this package
imports both.
"""
