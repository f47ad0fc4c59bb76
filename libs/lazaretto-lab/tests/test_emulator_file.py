"""The lab CMTS emulator ships inside the lab package and stays runnable by a bare Python.

compose's lab-cmts image (python:3.11-slim plus snmpd) mounts this very file and runs it with no
packages installed, and snmpd starts it as a script: it must import the standard library only.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import lazaretto_lab
from lazaretto_lab.process import LabProcessError
from lazaretto_lab.snmpd import EMULATOR_ENV, find_emulator


def test_the_emulator_is_found_beside_the_lab_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(EMULATOR_ENV, raising=False)
    assert find_emulator() == Path(lazaretto_lab.__file__).resolve().with_name("cmts_emulator.py")


def test_an_override_that_is_not_a_file_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(EMULATOR_ENV, str(tmp_path / "missing.py"))
    with pytest.raises(LabProcessError, match=EMULATOR_ENV):
        find_emulator()


def test_the_emulator_imports_the_standard_library_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(EMULATOR_ENV, raising=False)
    tree = ast.parse(find_emulator().read_text())
    modules = {alias.name for n in ast.walk(tree) if isinstance(n, ast.Import) for alias in n.names}
    modules |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert all(n.level == 0 for n in ast.walk(tree) if isinstance(n, ast.ImportFrom))
    tops = {m.split(".")[0] for m in modules} - {"__future__"}
    assert tops, "the emulator imports nothing? the parse went wrong"
    assert tops <= set(sys.stdlib_module_names), tops - set(sys.stdlib_module_names)
