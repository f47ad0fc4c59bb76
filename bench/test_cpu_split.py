"""The CPU split bench-policy prints: a process that burns a known amount of CPU is counted with it, by
pid and by command name; one that sleeps is not; the machine's busy share is a share."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent))

from cpu_split import CpuSplit, command_cpu, process_cpu, tree_cpu

# Burns 0.3 s of its own CPU (whatever else the machine runs meanwhile), says so, then waits.
BURN = "import sys, time\nwhile time.process_time() < 0.3: pass\nprint('ready', flush=True)\nsys.stdin.read()"
SLEEP = "import sys; print('ready', flush=True); sys.stdin.read()"


@contextlib.contextmanager
def running(code: str) -> Iterator[subprocess.Popen[str]]:
    """A Python child running `code`, once it printed "ready"; ended (stdin closed) on leaving."""
    with subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as process:
        assert process.stdout is not None
        assert process.stdin is not None
        try:
            assert process.stdout.readline().strip() == "ready"
            yield process
        finally:
            process.stdin.close()
            process.wait(10)


def test_each_group_is_counted_with_the_cpu_it_used_during_the_phase() -> None:
    with running(SLEEP) as sleeper:  # started, its start-up before the phase
        split = CpuSplit({"sleeper": lambda: process_cpu(sleeper.pid)})
        split.start()
        with running(BURN) as burner:
            # Counted while alive: by pid, and by its command name with the other Python processes
            by_pid = process_cpu(burner.pid)
            assert by_pid >= 0.29  # clock ticks: 10 ms
            assert command_cpu(Path(sys.executable).name) >= by_pid
            cores = split.stop()
    assert cores["sleeper"] < 0.05
    assert 0.0 < cores["machine_busy"] <= 1.0


def test_a_process_that_ended_counts_nothing() -> None:
    with running(SLEEP) as ended:
        pass
    assert process_cpu(ended.pid) == 0.0


def test_a_process_tree_counts_its_live_children() -> None:
    # A parent that waits while its child burns (as snmpd waits while its emulators answer)
    parent = (
        "import subprocess, sys\n"
        "from subprocess import PIPE\n"
        f"child = subprocess.Popen([sys.executable, '-c', {BURN!r}], stdin=PIPE, stdout=PIPE)\n"
        "child.stdout.readline()\n"
        "print('ready', flush=True)\n"
        "sys.stdin.read()\n"
        "child.stdin.close()\n"
        "child.wait()\n"
    )
    with running(parent) as waiting:
        assert process_cpu(waiting.pid) < 0.2
        assert tree_cpu(waiting.pid) >= process_cpu(waiting.pid) + 0.29
