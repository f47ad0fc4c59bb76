"""bench-e2e's host writeback (bench/writeback.py): it applies the shipped sysctl drop-in for the run
and puts back what the host had, through whichever of the bytes/ratio pair held it (a fake /proc/sys
that behaves as the kernel's: setting one zeroes the other, 0 is refused)."""

from __future__ import annotations

import importlib
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture
def writeback(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.setattr(sys, "path", [*sys.path, str(BENCH)])
    return importlib.import_module("writeback")


def in_test(writeback: ModuleType, settings: dict[str, str], root: Path) -> Any:
    """`writeback.applied` on the test's /proc/sys, with its journal beside it (not in /run)."""
    return writeback.applied(settings, root=root, journal=root / "journal.json")


class KernelVm:
    """/proc/sys/vm's dirty_background pair, written through `Path.write_text` as the kernel takes it."""

    def __init__(self, root: Path, *, ratio: str = "10", size: str = "0") -> None:
        self.vm = root / "vm"
        self.vm.mkdir(parents=True)
        (self.vm / "dirty_background_ratio").write_text(ratio + "\n")
        (self.vm / "dirty_background_bytes").write_text(size + "\n")

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real_write = Path.write_text
        vm = self.vm

        def write_text(path: Path, data: str, *args: object, **kwargs: object) -> int:
            if path.parent == vm and path.name.startswith("dirty_background_"):
                if int(data) <= 0:
                    raise OSError(22, "Invalid argument")
                other = "ratio" if path.name.endswith("bytes") else "bytes"
                real_write(vm / f"dirty_background_{other}", "0\n")
            return real_write(path, data)

        monkeypatch.setattr(Path, "write_text", write_text)

    def now(self) -> tuple[str, str]:
        return (
            (self.vm / "dirty_background_bytes").read_text().strip(),
            (self.vm / "dirty_background_ratio").read_text().strip(),
        )


@pytest.fixture
def debian_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> KernelVm:
    """A host as Debian leaves it: background writeback at 10 % of memory."""
    kernel = KernelVm(tmp_path, ratio="10")
    kernel.install(monkeypatch)
    return kernel


def test_the_drop_in_starts_background_writeback_at_64_mib(writeback: ModuleType) -> None:
    assert writeback.recommended() == {"vm.dirty_background_bytes": str(64 * 1024 * 1024)}


def test_applied_for_the_run_then_the_ratio_the_host_had_is_back(
    writeback: ModuleType, debian_host: KernelVm, tmp_path: Path
) -> None:
    kernel = debian_host
    with in_test(writeback, writeback.recommended(), tmp_path) as used:
        assert kernel.now() == ("67108864", "0")
        assert used == {"vm.dirty_background_bytes": "67108864", "vm.dirty_background_ratio": "0"}
    assert kernel.now() == ("0", "10")


def test_a_host_that_set_bytes_itself_gets_its_bytes_back(
    writeback: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kernel = KernelVm(tmp_path, ratio="0", size="33554432")
    kernel.install(monkeypatch)
    with in_test(writeback, {"vm.dirty_background_bytes": "67108864"}, tmp_path):
        assert kernel.now() == ("67108864", "0")
    assert kernel.now() == ("33554432", "0")


def test_put_back_when_the_run_fails(writeback: ModuleType, debian_host: KernelVm, tmp_path: Path) -> None:
    kernel = debian_host
    with (
        pytest.raises(RuntimeError),
        in_test(writeback, writeback.recommended(), tmp_path),
    ):
        raise RuntimeError("the lab did not start")
    assert kernel.now() == ("0", "10")


def test_as_found_changes_nothing_and_reads_the_pair(
    writeback: ModuleType, debian_host: KernelVm, tmp_path: Path
) -> None:
    kernel = debian_host
    with in_test(writeback, {}, tmp_path):
        read = writeback.read(["vm.dirty_background_bytes"], root=tmp_path)
    assert read == {"vm.dirty_background_bytes": "0", "vm.dirty_background_ratio": "10"}
    assert kernel.now() == ("0", "10")


def test_a_setting_the_kernel_does_not_have_is_refused_before_anything_changes(
    writeback: ModuleType, debian_host: KernelVm, tmp_path: Path
) -> None:
    kernel = debian_host
    wanted = {"vm.dirty_background_bytes": "67108864", "vm.no_such_knob": "1"}
    with (
        pytest.raises(FileNotFoundError, match=r"vm\.no_such_knob"),
        in_test(writeback, wanted, tmp_path),
    ):
        pass
    assert kernel.now() == ("0", "10")


def test_this_kernel_has_the_setting_and_its_partner(writeback: ModuleType) -> None:
    read = writeback.read(list(writeback.recommended()))
    assert set(read) == {"vm.dirty_background_bytes", "vm.dirty_background_ratio"}
    assert all(value.isdigit() for value in read.values())


KILLED_RUN = """
import os, signal, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import writeback
root = Path(sys.argv[2])
run = writeback.applied(writeback.recommended(), root=root, journal=root / "journal.json")
run.__enter__()
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_what_a_run_killed_with_sigkill_left_set_is_put_back_by_the_next(
    writeback: ModuleType, debian_host: KernelVm, tmp_path: Path
) -> None:
    kernel = debian_host
    journal = tmp_path / "journal.json"
    # Given a run killed with SIGKILL while the drop-in's setting was in force (no finally ran)
    killed = subprocess.run([sys.executable, "-c", KILLED_RUN, str(BENCH), str(tmp_path)], check=False)
    assert killed.returncode == -signal.SIGKILL
    assert kernel.now()[0] == "67108864"
    assert journal.exists()
    # When the next run starts and ends
    with writeback.applied(writeback.recommended(), root=tmp_path, journal=journal) as used:
        assert used["vm.dirty_background_bytes"] == "67108864"
    # Then the host has the ratio it had before the killed run, and no journal is left
    assert kernel.now() == ("0", "10")
    assert not journal.exists()


def test_recover_puts_back_a_killed_runs_setting_and_is_a_no_op_without_one(
    writeback: ModuleType, debian_host: KernelVm, tmp_path: Path
) -> None:
    kernel = debian_host
    journal = tmp_path / "journal.json"
    assert writeback.recover(tmp_path, journal) == {}
    killed = subprocess.run([sys.executable, "-c", KILLED_RUN, str(BENCH), str(tmp_path)], check=False)
    assert killed.returncode == -signal.SIGKILL
    assert writeback.recover(tmp_path, journal) == {"vm.dirty_background_bytes": "0"}
    assert kernel.now() == ("0", "10")
    assert not journal.exists()
