"""Every third-party module the package imports is a declared dependency with a floor (issue: httpx2 was not).

The walk reads every ``import`` of the installed package's sources (function bodies included, where the heavy
imports live) and maps each top-level module to the distributions that provide it, as the environment knows them.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("recycled_datasets", "builders", "model_cards")
OWN = {"recycled_datasets", "__future__"}


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared(pyproject: Path) -> dict[str, str]:
    """Distribution name (normalized) -> its requirement string, from ``[project].dependencies``."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    out = {}
    for requirement in project["dependencies"]:
        name = re.match(r"[A-Za-z0-9_.\-]+", requirement).group(0)
        out[_normalize(name)] = requirement
    return out


def third_party_imports(roots: list[Path]) -> dict[str, list[str]]:
    """Top-level module -> the files importing it (absolute imports that are neither stdlib nor ours)."""
    found: dict[str, list[str]] = {}
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in OWN:
                        found.setdefault(top, []).append(str(path.relative_to(root.parent)))
    return found


def undeclared(roots: list[Path], pyproject: Path) -> list[str]:
    deps = declared(pyproject)
    providers = md.packages_distributions()
    problems = []
    for module, files in sorted(third_party_imports(roots).items()):
        dists = {_normalize(d) for d in providers.get(module, [])}
        if not dists:
            problems.append(f"{module} (imported by {files[0]}) is not installed and not declared")
        elif not dists & deps.keys():
            problems.append(f"{module} (imported by {files[0]}) comes from {', '.join(sorted(dists))}: not declared")
    return problems


def test_every_third_party_import_is_a_declared_dependency():
    assert undeclared([ROOT / s for s in SOURCES], ROOT / "pyproject.toml") == []


def test_every_dependency_has_a_floor():
    assert [r for r in declared(ROOT / "pyproject.toml").values() if ">=" not in r and "==" not in r] == []


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("import yaml\n", "yaml (imported by pkg/mod.py) comes from pyyaml: not declared"),
        ("def f():\n    from not_a_real_module_xyz import thing\n", "not_a_real_module_xyz (imported by pkg/mod.py)"),
    ],
)
def test_the_walk_fails_on_an_undeclared_import(tmp_path, line, expected):
    """The check itself: a module importing something the project does not declare is named."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text("import json\nimport torch\n" + line, encoding="utf-8")
    (tmp_path / "pyproject.toml").write_text('[project]\ndependencies = ["torch>=2.4"]\n', encoding="utf-8")
    problems = undeclared([tmp_path / "pkg"], tmp_path / "pyproject.toml")
    assert len(problems) == 1 and problems[0].startswith(expected)
