"""The dependency rule between the layers (``smartbox/app/__init__.py``), read from the source.

Every import statement counts, the ones inside functions too (a lazy import is still a
dependency), relative ones resolved against the module's package:
* the plumbing (``smartbox`` outside ``smartbox.app`` and its ``__main__``) imports no
  stage and no app module;
* the stages (``producers``, ``consumers``) and the contracts (``schemas``) never import the
  app layer; the contracts import no stage either.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("producers", "consumers")
APP = "smartbox.app"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    """Every module `path` imports (absolute names; ``from a import b`` gives a and a.b)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def within(module: str, top: str) -> bool:
    return module == top or module.startswith(top + ".")


def sources(top: str) -> list[Path]:
    return sorted((ROOT / top).rglob("*.py"))


def offending(paths: list[Path], forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    bad = {}
    for path in paths:
        hits = sorted(m for m in imports(path) if any(within(m, f) for f in forbidden))
        if hits:
            bad[str(path.relative_to(ROOT))] = hits
    return bad


def test_the_plumbing_imports_no_stage_and_nothing_of_the_app_layer() -> None:
    # ``python -m smartbox`` (``smartbox/__main__.py``) is the command's entry point: app
    plumbing = [
        p
        for p in sources("smartbox")
        if not within(module_name(p), APP) and module_name(p) != "smartbox.__main__"
    ]
    assert len(plumbing) > 20  # the rule is checked on the real tree
    assert offending(plumbing, (*STAGES, APP)) == {}


@pytest.mark.parametrize("top", [*STAGES, "schemas"])
def test_stages_and_contracts_never_import_the_app_layer(top: str) -> None:
    forbidden = (APP, *STAGES) if top == "schemas" else (APP,)
    assert sources(top)
    assert offending(sources(top), forbidden) == {}


def test_the_rule_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    """The checker itself: a function-level relative import of a stage is found."""
    path = ROOT / "smartbox" / "app" / "daemons.py"
    found = imports(path)
    assert "smartbox.app.factories" in found  # ``from . import factories`` inside a function
    assert any(within(m, "producers") for m in found)  # ``from producers.receiver import ...``


def test_the_command_and_the_demo_build_services_through_the_same_factories() -> None:
    """No service of a stage is constructed in the command or the demo: only factories do."""
    constructors = {"ReceiverService", "Anonymiser", "Exporter", "NationalIngest"}
    for name in ("cli", "daemons", "demo", "export_cli", "probe", "maintenance"):
        tree = ast.parse((ROOT / "smartbox" / "app" / f"{name}.py").read_text(encoding="utf-8"))
        called = {
            n.func.id if isinstance(n.func, ast.Name) else getattr(n.func, "attr", "")
            for n in ast.walk(tree)
            if isinstance(n, ast.Call)
        }
        assert not called & constructors, (name, called & constructors)
