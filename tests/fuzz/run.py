"""`make fuzz`: every parser target, at least `--inputs` inputs in total within `--minutes`.

Prints one `target=… inputs=… rejected=… crashes=… per_s=…` line per target, each crash's kind, place
and input, and the totals `inputs=… crashes=…`; exits 1 on any crash or if the total falls short.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from engine import Result, run_target
from targets import Target, all_targets


def fuzz(total: int, minutes: float, only: str | None = None) -> list[Result]:
    targets = [t for t in all_targets() if only is None or only in t.name]
    budget = minutes * 60
    started = time.monotonic()
    results: dict[str, Result] = {}
    share = total // len(targets) + 1
    # First pass: an equal share of inputs each, within an equal share of the time.
    for target in targets:
        results[target.name] = _report(run_target(target, share, seconds=budget / len(targets)))
    # Slow targets (a YAML file, a settings object) fall short of their share: the fast ones make it up.
    by_speed = sorted(targets, key=lambda t: results[t.name].inputs / max(results[t.name].seconds, 1e-3))
    while sum(r.inputs for r in results.values()) < total and by_speed:
        left = budget - (time.monotonic() - started)
        if left <= 0:
            break
        fastest: Target = by_speed.pop()
        missing = total - sum(r.inputs for r in results.values())
        _merge(results[fastest.name], _report(run_target(fastest, missing, seconds=left)))
    return list(results.values())


def _report(result: Result) -> Result:
    rate = result.inputs / max(result.seconds, 1e-3)
    print(
        f"target={result.name} inputs={result.inputs} rejected={result.rejected} "
        f"crashes={result.crashes} per_s={rate:.0f}",
        flush=True,
    )
    for crash in result.examples:
        print(f"  crash {crash.where}: {crash.message!r} input={crash.data!r}", flush=True)
    return result


def _merge(into: Result, more: Result) -> None:
    into.inputs += more.inputs
    into.rejected += more.rejected
    into.crashes += more.crashes
    into.seconds += more.seconds
    into.examples += more.examples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--inputs", type=int, default=1_000_000)
    parser.add_argument("--minutes", type=float, default=38.0)
    parser.add_argument("--only", help="only targets whose name contains this")
    args = parser.parse_args()
    results = fuzz(args.inputs, args.minutes, args.only)
    inputs = sum(r.inputs for r in results)
    crashes = sum(r.crashes for r in results)
    print("per-target: " + " ".join(f"{r.name}={r.inputs}" for r in results))
    print(f"targets={len(results)} inputs={inputs} crashes={crashes}")
    return 0 if crashes == 0 and inputs >= args.inputs else 1


if __name__ == "__main__":
    sys.exit(main())
