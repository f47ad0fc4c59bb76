"""Who used the machine's CPU during a phase of a benchmark, in cores (CPU seconds per second of the phase).

A benchmark on a 2-core machine shares it with the broker, the database and its own load generator: a
latency figure means little without what each of them used meanwhile. Read from /proc (Linux):
processes by pid, every process of a command name (PostgreSQL's backends, RabbitMQ's `beam.smp`; a
process that ends during the phase takes its CPU with it), and the machine as a whole (/proc/stat).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def stat_cpu(stat: str) -> float:
    """User and system CPU seconds from a /proc/<pid>/stat line (the name may hold spaces and ')')."""
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def process_cpu(pid: int) -> float:
    """CPU seconds the process used so far; 0 once it is gone."""
    try:
        return stat_cpu(Path(f"/proc/{pid}/stat").read_text())
    except (OSError, IndexError, ValueError):
        return 0.0


def _processes() -> Iterator[tuple[int, str]]:
    """(pid, /proc/<pid>/stat line) of every running process (one that ends meanwhile is skipped)."""
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                yield int(entry.name), Path(entry.path, "stat").read_text()
            except OSError:
                continue


def command_cpu(*names: str) -> float:
    """CPU seconds used so far by every running process whose command name is one of `names`."""
    return sum(
        stat_cpu(stat) for _, stat in _processes() if stat[stat.index("(") + 1 : stat.rindex(")")] in names
    )


def tree_cpu(pid: int) -> float:
    """CPU seconds used so far by the process and its live children (snmpd's pass_persist emulators)."""
    return sum(stat_cpu(stat) for child, stat in _processes() if pid in (child, _parent(stat)))


def _parent(stat: str) -> int:
    return int(stat.rsplit(")", 1)[1].split()[1])


def machine_busy() -> tuple[float, float]:
    """(busy, all) CPU seconds of the whole machine so far, every core (/proc/stat's first line)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (values + [0] * 8)[:8]
    busy = user + nice + system + irq + softirq + steal
    return busy / TICK, (busy + idle + iowait) / TICK


class CpuSplit:
    """`start()`, then `stop()`: each group's cores over the phase, and `machine_busy`: the share of
    all the machine's cores that were busy (1.0: every core, all the time)."""

    def __init__(self, groups: dict[str, Callable[[], float]]) -> None:
        self.groups = groups
        self._began: tuple[float, dict[str, float], tuple[float, float]] | None = None
        self.seconds = 0.0  # the phase's length, once stopped

    def start(self) -> None:
        self._began = (time.monotonic(), self._read(), machine_busy())

    def stop(self) -> dict[str, float]:
        assert self._began is not None, "stop() before start()"
        began, before, (busy_before, all_before) = self._began
        wall = self.seconds = max(time.monotonic() - began, 1e-9)
        after = self._read()
        busy, every = machine_busy()
        split = {name: (after[name] - before[name]) / wall for name in self.groups}
        split["machine_busy"] = (busy - busy_before) / max(every - all_before, 1e-9)
        return split

    def _read(self) -> dict[str, float]:
        return {name: read() for name, read in self.groups.items()}
