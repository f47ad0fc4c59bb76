"""The short fault run of `make test` (the long one is `make test-faults`): about 100 subscribers
behind four lab CMTSes, every fault in turn, then the end state against the ground truth."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fault_harness import ALL_FAULTS, FaultRun, Report, machine

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(1200)
def test_faults_lose_nothing_and_do_nothing_twice(tmp_path: Path) -> None:
    report = Report()
    with FaultRun(tmp_path, subscribers=100, cmtses=4, time_scale=1 / 3) as run:
        run.flood_with_faults(list(ALL_FAULTS), report)
        run.verify(report)
        leaks = run.leaked_secrets()
    print(f"machine={machine()}")
    print("\n".join(report.lines()))
    assert report.problems == []
    for name in ("lost", "duplicates", "diverged", "duplicate_resets", "unexplained_dlq"):
        assert report.figures[name] == 0, name
    assert all(seconds != float("inf") for seconds in report.heal.values()), report.heal
    # Nothing the run configured as a secret shows in a log or on a metrics page.
    assert leaks == []
