"""The layer rule of shared/DESIGN.md section 1: nothing imports from a layer above it."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "skrep"

# a module under the key may not import from any of these packages
FORBIDDEN = {
    "kernels": ("skrep.explainers", "skrep.adapters"),
    "adapters": ("skrep.explainers",),
}


def imports_in(source: str, package: str) -> list[str]:
    """Absolute names of everything ``source`` (a module of ``package``) imports."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                module = ".".join(parts + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.append(module)
            names += [f"{module}.{a.name}" for a in node.names]
    return names


def violations(layer: str, modules: dict[str, list[str]]) -> list[str]:
    """'module imports name' for every import that breaks the rule for ``layer``."""
    return [
        f"{mod} imports {name}"
        for mod, names in modules.items()
        for name in names
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[layer])
    ]


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_rule_holds(layer):
    modules = {}
    for path in (PACKAGE / layer).rglob("*.py"):
        package = ".".join(path.relative_to(PACKAGE.parent).parts[:-1])
        modules[str(path.relative_to(PACKAGE.parent))] = imports_in(path.read_text(), package)
    assert modules
    assert violations(layer, modules) == []


def test_rule_catches_forbidden_imports():
    probe = "from ..explainers.base import BaseExplainer\nimport skrep.adapters.torch\nfrom . import blocks\n"
    found = violations("kernels", {"probe": imports_in(probe, "skrep.kernels")})
    assert found == [
        "probe imports skrep.explainers.base",
        "probe imports skrep.explainers.base.BaseExplainer",
        "probe imports skrep.adapters.torch",
    ]
    assert violations("adapters", {"probe": imports_in("from ..kernels import total\n", "skrep.adapters")}) == []
