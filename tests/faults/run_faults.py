"""make test-faults: the long fault run (1,000 subscribers behind four lab CMTSes, every fault in turn,
at full length: BIND down 30 s, 30% SNMP loss for 30 s, Kea's database cut for 20 s). Prints one
`name=value` per line and exits non-zero unless lost, duplicates, diverged, duplicate_resets and
unexplained_dlq are all 0, every fault healed and no configured secret shows in the captured output."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from fault_harness import ALL_FAULTS, FaultRun, Report, machine


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--cmtses", type=int, default=4)
    parser.add_argument("--time-scale", type=float, default=1.0)
    parser.add_argument("--faults", default=",".join(ALL_FAULTS))
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="lazaretto-faults-"))
    report = Report()
    try:
        with FaultRun(
            workdir, subscribers=args.subscribers, cmtses=args.cmtses, time_scale=args.time_scale
        ) as run:
            run.flood_with_faults(args.faults.split(","), report)
            run.verify(report)
            leaks = run.leaked_secrets()
    finally:
        print(f"# work directory (logs): {workdir}", flush=True)
    print(f"machine={machine()}")
    print("\n".join(report.lines()))
    print(f"secrets_leaked={len(leaks)}")
    for line in report.problems + leaks:
        print(f"# {line}")
    figures = ("lost", "duplicates", "diverged", "duplicate_resets", "unexplained_dlq")
    healed = all(seconds != float("inf") for seconds in report.heal.values())
    ok = not report.problems and not leaks and healed and all(report.figures[f] == 0 for f in figures)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
