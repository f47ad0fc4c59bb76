"""Package boundaries, read from the source: the product library never imports the lab, services never
import the lab or each other, and each library declares exactly the third-party packages it imports.

The lab (libs/lazaretto-lab) is a dev-only dependency: if core or a service imported it, every service
image would need pytest, scapy and dnspython, or would crash at import time.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
import tomllib
from importlib.metadata import distribution, packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "libs" / "lazaretto-core"
LAB = ROOT / "libs" / "lazaretto-lab"
SERVICES = sorted(p for p in (ROOT / "services").iterdir() if (p / "pyproject.toml").is_file())
SERVICE_MODULES = {p.name.replace("-", "_") for p in SERVICES}
# Workspace members are installed editable (a .pth path), which packages_distributions() cannot see.
WORKSPACE = {"lazaretto_core": ["lazaretto-core"], "lazaretto_lab": ["lazaretto-lab"]}


def imported_names(src: Path) -> dict[str, list[str]]:
    """Imported module name (dotted, as written) -> the files importing it (absolute imports, any depth)."""
    found: dict[str, list[str]] = {}
    for path in sorted(src.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                # `from package import module` imports package.module (or just names from package).
                names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            for name in names:
                found.setdefault(name, []).append(str(path.relative_to(ROOT)))
    return found


def top_level_imports(src: Path) -> dict[str, list[str]]:
    """Top-level module name -> the files importing it."""
    found: dict[str, list[str]] = {}
    for name, files in imported_names(src).items():
        found.setdefault(name.split(".")[0], []).extend(files)
    return found


def normalize(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


def declared(pyproject: Path) -> set[str]:
    """The distribution names in [project].dependencies, without version specifiers."""
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    return {normalize(re.split(r"[<>=!~;\[ ]", dep, maxsplit=1)[0]) for dep in deps}


def providing_distribution(name: str, candidates: list[str]) -> str | None:
    """Which of the distributions sharing a namespace package (opentelemetry-api, -sdk, …) holds the
    module `name`; None when `name` is the namespace itself or a name imported from a module."""
    try:
        spec = importlib.util.find_spec(name)
    except ModuleNotFoundError:
        return None
    if spec is None or spec.origin is None:
        return None
    origin = Path(spec.origin).resolve()
    for dist in candidates:
        files = distribution(dist).files or []
        if any(Path(str(f.locate())).resolve() == origin for f in files):
            return dist
    raise AssertionError(f"no installed distribution of {candidates} holds {name}")


def third_party(src: Path, own: str) -> dict[str, str]:
    """Distribution name -> module, for every import that is neither stdlib nor the package itself.
    A namespace package several distributions share counts only the one holding each imported module."""
    dists = {**packages_distributions(), **WORKSPACE}
    out: dict[str, str] = {}
    for name, files in imported_names(src).items():
        module = name.split(".")[0]
        if module in sys.stdlib_module_names or module in {own, "__future__"}:
            continue
        assert module in dists, f"{module} is imported ({files[0]}) but not installed"
        providers = list(dict.fromkeys(dists[module]))
        if len(providers) > 1:
            holder = providing_distribution(name, providers)
            providers = [holder] if holder else []
        for dist in providers:
            out[normalize(dist)] = module
    return out


@pytest.mark.parametrize(("package", "module"), [(CORE, "lazaretto_core"), (LAB, "lazaretto_lab")])
def test_library_declares_exactly_what_it_imports(package: Path, module: str) -> None:
    used = third_party(package / "src", module)
    deps = declared(package / "pyproject.toml")
    assert set(used) - deps == set(), f"imported but not declared: {sorted(set(used) - deps)}"
    assert deps - set(used) == set(), f"declared but never imported: {sorted(deps - set(used))}"


@pytest.mark.parametrize("package", SERVICES, ids=lambda p: p.name)
def test_service_imports_are_declared(package: Path) -> None:
    """A service may use what core's API is built on (pydantic, fastapi …); anything else it declares."""
    used = third_party(package / "src", package.name.replace("-", "_"))
    deps = declared(package / "pyproject.toml") | declared(CORE / "pyproject.toml")
    assert set(used) - deps == set(), f"imported but not declared: {sorted(set(used) - deps)}"


def test_the_lab_is_a_dev_dependency_only() -> None:
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "lazaretto-lab" not in {normalize(d) for d in root["project"]["dependencies"]}
    assert "lazaretto-lab" in root["dependency-groups"]["dev"]
    for package in [CORE, *SERVICES]:
        assert "lazaretto-lab" not in declared(package / "pyproject.toml"), package.name
