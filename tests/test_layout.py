"""The house's walls: a lower room never imports a higher one (read from the source, every import
statement, at module level or inside a function)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "focalexp"

# room -> the rooms it may import (besides itself and the shared base: errors, fileio, unpickle, config,
# plugins, provenance; configtools and overrides are deprecated aliases of config)
ALLOWED = {
    "models": set(),
    "data": set(),
    "train": {"models", "data"},
    "analysis": {"models", "data"},
    "detection": {"models", "data", "train", "analysis"},
    "tasks": {"models", "data", "train", "analysis", "detection"},
    "sweep": {"tasks"},
}
BASE = {"errors", "fileio", "unpickle", "configtools", "overrides", "config", "plugins", "assets", "provenance"}


def _room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "focalexp" else None


def _imports(path: Path) -> list[tuple[int, str]]:
    here = "focalexp." + ".".join(path.relative_to(PKG).with_suffix("").parts)
    pkg_parts = here.split(".")[:-1] if path.name != "__init__.py" else here.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("focalexp")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg_parts[: len(pkg_parts) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod == "focalexp" or (node.level and not node.module):
                found += [(node.lineno, f"{mod}.{a.name}") for a in node.names]
            elif mod.startswith("focalexp"):
                found.append((node.lineno, mod))
    return found


@pytest.mark.parametrize("room", sorted(ALLOWED))
def test_lower_rooms_never_import_higher_ones(room):
    bad = []
    for path in sorted((PKG / room).rglob("*.py")):
        for line, mod in _imports(path):
            target = _room(mod)
            if target is None or target == room or target in BASE or target in ALLOWED[room]:
                continue
            bad.append(f"{path.relative_to(PKG.parent)}:{line} imports {mod}")
    assert not bad, "\n".join(bad)


def test_every_package_is_a_room():
    """A new subpackage gets its walls here."""
    packages = {p.parent.name for p in PKG.glob("*/__init__.py")}
    assert packages == set(ALLOWED), packages ^ set(ALLOWED)


def test_the_checker_sees_relative_imports_inside_functions(tmp_path):
    """The checker itself: a relative import inside a function is found and resolved."""
    src = PKG / "train" / "loop.py"
    mods = {m for _, m in _imports(src)}
    assert "focalexp.models.checkpoint" in mods and "focalexp.fileio" in mods
