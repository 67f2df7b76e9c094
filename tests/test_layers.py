"""The package's layers (docs/design.md): a module imports only from its own subpackage and from
subpackages of lower layers, so there are no import circles and no import points upwards."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import ROOT

PACKAGE = ROOT / "src" / "rnnlab"
LAYERS = [{"errors"}, {"config"}, {"text", "kernels"}, {"models"}, {"evaluation"},
          {"training", "forecast"}, {"sweeps", "analysis"}, {"claims"}]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _room(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out += [node.module] if node.module != "rnnlab" else \
                [f"rnnlab.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names]
    return [m for m in out if m.startswith("rnnlab.")]


MODULES = sorted(p for p in PACKAGE.rglob("*.py"))


def test_every_subpackage_has_a_layer_and_is_not_crowded():
    rooms = {p.parent.name for p in MODULES if p.parent != PACKAGE} | {
        p.stem for p in MODULES if p.parent == PACKAGE and p.stem != "__init__"}
    assert rooms == set(RANK), rooms ^ set(RANK)
    for room in rooms:
        modules = [p for p in (PACKAGE / room).glob("*.py") if p.stem != "__init__"]
        assert len(modules) <= 12, (room, len(modules))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down_the_layers(path):
    rel = path.relative_to(PACKAGE)
    room = rel.parts[0] if len(rel.parts) > 1 else rel.stem
    if room == "__init__":
        return
    for module in _imports(path):
        other = _room(module)
        assert other in RANK, f"{rel} imports {module}: no such subpackage"
        assert other == room or RANK[other] < RANK[room], (
            f"{rel} ({room}, layer {RANK[room]}) imports {module} ({other}, layer {RANK[other]})")


@pytest.mark.parametrize("path", sorted({*MODULES, *(ROOT / "scripts").glob("*.py"),
                                         *(ROOT / "benchmarks").glob("*.py")}),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_no_file_is_over_400_lines(path):
    assert len(path.read_text().splitlines()) <= 400
