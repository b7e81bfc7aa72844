"""The receiver's seams: pynetdicom used from one module (and its internals by the tests'
reference path), in a pinned and checked version range; statuses and reject reasons from one
module; no import cycle between modules."""

from __future__ import annotations

import ast
import importlib
import re
import tomllib
from pathlib import Path

import pytest
from helpers.receiver_env import make_trust
from pynetdicom.pdu import A_ASSOCIATE_RJ

from producers.receiver import pynetdicom_compat as compat
from producers.receiver import scp, status
from producers.receiver.associate import encode_associate_rj

ROOT = Path(__file__).resolve().parents[2]
RECEIVER = ROOT / "producers" / "receiver"
INTERNALS = set(compat.USED_INTERNALS)


def _imports(path: Path) -> set[str]:
    """Modules imported by ``path`` (relative imports resolved), TYPE_CHECKING ones included."""
    package = "producers.receiver"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = f"{package}.{base}" if base else package
                out.update(f"{package}.{alias.name}" for alias in node.names if not node.module)
            out.add(base)
    return out


def test_installed_pynetdicom_is_in_the_declared_range_and_pinned() -> None:
    assert compat.version_supported(compat.installed_version())
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (spec,) = [d for d in pyproject["project"]["dependencies"] if d.startswith("pynetdicom")]
    (lowest, below) = compat.SUPPORTED_RANGE
    assert spec == f"pynetdicom>={lowest[0]}.{lowest[1]},<{below[0]}.{below[1]}"
    assert not compat.version_supported((below[0], below[1], 0))
    assert not compat.version_supported((lowest[0], lowest[1] - 1, 9))


@pytest.mark.parametrize("module", sorted(INTERNALS))
def test_every_internal_used_exists(module: str) -> None:
    mod = importlib.import_module(module)
    missing = [name for name in compat.USED_INTERNALS[module] if not hasattr(mod, name)]
    assert missing == []


def test_only_the_compat_module_imports_pynetdicom_internals() -> None:
    offenders = []
    for package in ("producers", "consumers", "smartbox"):
        for path in (ROOT / package).rglob("*.py"):
            if path.name != "pynetdicom_compat.py" and _imports(path) & INTERNALS:
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_the_reference_path_uses_only_the_declared_internals() -> None:
    """What the tests hold ``associate.py`` to is pynetdicom's code in the checked range."""
    tree = ast.parse((ROOT / "tests" / "helpers" / "pynetdicom_reference.py").read_text())
    used = {
        (node.module, alias.name)
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pynetdicom")
        for alias in node.names
    }
    declared = {(m, name) for m, names in compat.USED_INTERNALS.items() for name in names}
    assert used and used <= declared


def test_the_storage_sop_classes_come_from_pynetdicom() -> None:
    classes = compat.storage_sop_classes()
    assert len(classes) > 100 and len(set(classes)) == len(classes)
    assert "1.2.840.10008.5.1.4.1.1.2" in classes  # CT Image Storage
    assert [abstract for abstract, _ts in scp.supported_contexts()] == [*classes, scp.VERIFICATION]


def test_the_receiver_modules_import_no_cycle() -> None:
    graph = {
        f"producers.receiver.{p.stem}": {
            m for m in _imports(p) if m.startswith("producers.receiver.")
        }
        for p in RECEIVER.glob("*.py")
        if p.stem != "__init__"
    }

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    assert [m for m in sorted(graph) if reaches(m, m, set())] == []


def test_status_codes_are_spelled_only_in_the_status_module() -> None:
    codes = {status.OUT_OF_RESOURCES, status.CANNOT_UNDERSTAND, status.SOP_CLASS_NOT_SUPPORTED}
    offenders = []
    for path in RECEIVER.glob("*.py"):
        if path.name == "status.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and type(node.value) is int and node.value in codes:
                offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == []


def test_the_vocabularies_are_closed() -> None:
    assert status.status_label(0xA700) == "0xA700"
    assert status.association_result("source_address") == "rejected_source_address"
    with pytest.raises(ValueError):
        status.status_label(0xB000)
    with pytest.raises(ValueError):
        status.association_result("deid_error:NotImplementedError")


def test_an_rj_encoded_here_decodes_to_its_triple() -> None:
    for reason, rejection in status.REJECTIONS.items():
        pdu = A_ASSOCIATE_RJ()
        pdu.decode(encode_associate_rj(rejection))
        assert (pdu.result, pdu.source, pdu.reason_diagnostic) == tuple(rejection), reason


def test_an_undecodable_rq_is_a_value_error_without_peer_bytes() -> None:
    with pytest.raises(ValueError) as err:
        scp.acceptor_for(make_trust()).parse(b"\x01\x00\x00\x00\x00\x10" + b"SECRET-PATIENT-X")
    assert not re.search("SECRET", str(err.value))
