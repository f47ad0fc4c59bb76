"""The host's dirty-page writeback as `deploy/sysctl/60-lazaretto-writeback.conf` sets it, for the
length of a benchmark run, then as it was: bench-e2e measures the system deployed as the README says,
and prints what the host ran with.

Setting `vm.dirty_background_bytes` makes the kernel zero `vm.dirty_background_ratio` (and the
reverse), and 0 is not a value either file takes: what was in use is restored through whichever of
the two held it.

What was in use is also written to a journal (in /run: gone at a reboot, when the host's own settings
are back anyway) before anything changes, and deleted once it is put back: a run killed with SIGKILL
cannot put it back itself, and the next run does, first (`recover`)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

DROP_IN = Path(__file__).resolve().parents[1] / "deploy" / "sysctl" / "60-lazaretto-writeback.conf"
PROC_SYS = Path("/proc/sys")
JOURNAL = Path("/run/lazaretto-bench-writeback.json")


def recommended(path: Path = DROP_IN) -> dict[str, str]:
    """The settings of a sysctl.d file (`key = value` lines; `#` and `;` begin comments)."""
    settings: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"{path}: not a sysctl setting: {raw!r}")
        settings[key.strip()] = value.strip()
    return settings


def _file(root: Path, key: str) -> Path:
    return root / key.replace(".", "/")


def _partner(key: str) -> str | None:
    """The setting the kernel zeroes when `key` is set (`…_bytes` and `…_ratio`)."""
    if key.endswith("_bytes"):
        return key.removesuffix("_bytes") + "_ratio"
    if key.endswith("_ratio"):
        return key.removesuffix("_ratio") + "_bytes"
    return None


def read(keys: list[str], root: Path = PROC_SYS) -> dict[str, str]:
    """Each key's value now, with its bytes/ratio partner."""
    names = {k: None for key in keys for k in (key, _partner(key)) if k is not None}
    return {key: _file(root, key).read_text().strip() for key in names if _file(root, key).exists()}


def _put_back(changed: list[str], before: Mapping[str, str], root: Path) -> None:
    """Write back what `before` held for the `changed` keys, each through whichever of its pair held it."""
    for key in reversed(changed):
        partner = _partner(key)
        if before.get(key, "0") != "0" or partner is None or partner not in before:
            _file(root, key).write_text(before[key])
        else:  # the partner held it: writing that brings this one back to 0
            _file(root, partner).write_text(before[partner])


def recover(root: Path = PROC_SYS, journal: Path = JOURNAL) -> dict[str, str]:
    """Put back what a run that was killed before it could had set (its journal); what was put back."""
    if not journal.exists():
        return {}
    entry = json.loads(journal.read_text())
    _put_back(entry["changed"], entry["before"], root)
    journal.unlink()
    return {key: entry["before"][key] for key in entry["changed"]}


@contextmanager
def applied(
    settings: Mapping[str, str], root: Path = PROC_SYS, journal: Path = JOURNAL
) -> Iterator[dict[str, str]]:
    """Set `settings` for the block, then put back what was; yields the values set, read back. A
    write that fails (not root: PermissionError) raises, after what was set before it is put back.
    What a killed earlier run left set is put back first (`recover`)."""
    recover(root, journal)
    keys = list(settings)
    before = read(keys, root)
    for key in keys:
        if not _file(root, key).exists():
            raise FileNotFoundError(f"no such kernel setting: {key}")
    if keys:
        journal.write_text(json.dumps({"changed": keys, "before": before}))
    changed: list[str] = []
    try:
        for key, value in settings.items():
            _file(root, key).write_text(value)
            changed.append(key)
        yield read(keys, root)
    finally:
        _put_back(changed, before, root)
        journal.unlink(missing_ok=True)


@contextmanager
def for_the_run(as_found: bool) -> Iterator[dict[str, str]]:
    """A benchmark's run with the host's writeback as deploy/sysctl sets it (`as_found`: as it is),
    put back afterwards; yields the figures saying what the run used (`host_writeback` and each
    setting's value), for it to print."""
    wanted = recommended()
    restored = recover()
    if restored:
        print(f"put back the host writeback a killed run left set: {restored}", file=sys.stderr)
    with applied({} if as_found else wanted):
        host = read(list(wanted))
        yield {
            "host_writeback": "as found" if as_found else f"deploy/sysctl/{DROP_IN.name}",
            **{f"host_{key.replace('.', '_')}": value for key, value in host.items()},
        }
