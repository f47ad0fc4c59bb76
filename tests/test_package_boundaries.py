"""Package boundaries, read from the source: the product library never imports the lab, services never
import the lab or each other, and each library declares exactly the third-party packages it imports.

The lab (libs/lazaretto-lab) is a dev-only dependency: if core or a service imported it, every service
image would need pytest, scapy and dnspython, or would crash at import time.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "libs" / "lazaretto-core"
LAB = ROOT / "libs" / "lazaretto-lab"
SERVICES = sorted(p for p in (ROOT / "services").iterdir() if (p / "pyproject.toml").is_file())
SERVICE_MODULES = {p.name.replace("-", "_") for p in SERVICES}
# Workspace members are installed editable (a .pth path), which packages_distributions() cannot see.
WORKSPACE = {"lazaretto_core": ["lazaretto-core"], "lazaretto_lab": ["lazaretto-lab"]}


def top_level_imports(src: Path) -> dict[str, list[str]]:
    """Top-level module name -> the files importing it (absolute imports only, at any depth)."""
    found: dict[str, list[str]] = {}
    for path in sorted(src.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                found.setdefault(name.split(".")[0], []).append(str(path.relative_to(ROOT)))
    return found


def normalize(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


def declared(pyproject: Path) -> set[str]:
    """The distribution names in [project].dependencies, without version specifiers."""
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    return {normalize(re.split(r"[<>=!~;\[ ]", dep, maxsplit=1)[0]) for dep in deps}


def third_party(imports: dict[str, list[str]], own: str) -> dict[str, str]:
    """Distribution name -> module, for every import that is neither stdlib nor the package itself."""
    dists = {**packages_distributions(), **WORKSPACE}
    out: dict[str, str] = {}
    for module in imports:
        if module in sys.stdlib_module_names or module in {own, "__future__"}:
            continue
        assert module in dists, f"{module} is imported ({imports[module][0]}) but not installed"
        for dist in dists[module]:
            out[normalize(dist)] = module
    return out


@pytest.mark.parametrize("package", [CORE, *SERVICES], ids=lambda p: p.name)
def test_product_code_never_imports_the_lab(package: Path) -> None:
    imports = top_level_imports(package / "src")
    assert "lazaretto_lab" not in imports, imports.get("lazaretto_lab")


@pytest.mark.parametrize("package", SERVICES, ids=lambda p: p.name)
def test_services_never_import_each_other(package: Path) -> None:
    own = package.name.replace("-", "_")
    imports = top_level_imports(package / "src")
    assert not {m: imports[m] for m in imports if m in SERVICE_MODULES - {own}}


@pytest.mark.parametrize(("package", "module"), [(CORE, "lazaretto_core"), (LAB, "lazaretto_lab")])
def test_library_declares_exactly_what_it_imports(package: Path, module: str) -> None:
    used = third_party(top_level_imports(package / "src"), module)
    deps = declared(package / "pyproject.toml")
    assert set(used) - deps == set(), f"imported but not declared: {sorted(set(used) - deps)}"
    assert deps - set(used) == set(), f"declared but never imported: {sorted(deps - set(used))}"


@pytest.mark.parametrize("package", SERVICES, ids=lambda p: p.name)
def test_service_imports_are_declared(package: Path) -> None:
    """A service may use what core's API is built on (pydantic, fastapi …); anything else it declares."""
    used = third_party(top_level_imports(package / "src"), package.name.replace("-", "_"))
    deps = declared(package / "pyproject.toml") | declared(CORE / "pyproject.toml")
    assert set(used) - deps == set(), f"imported but not declared: {sorted(set(used) - deps)}"


def test_the_lab_is_a_dev_dependency_only() -> None:
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "lazaretto-lab" not in {normalize(d) for d in root["project"]["dependencies"]}
    assert "lazaretto-lab" in root["dependency-groups"]["dev"]
    for package in [CORE, *SERVICES]:
        assert "lazaretto-lab" not in declared(package / "pyproject.toml"), package.name
