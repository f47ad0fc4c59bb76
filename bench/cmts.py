"""make bench-cmts: 1,000 modem resets over 10 emulated CMTSes, SET plus verification, per-CMTS limit 10.

Ten real net-snmp `snmpd`s on loopback, each with our pass_persist emulator (vendors rotate through
Cisco, Casa, Arris and DOCSIS 3 CmCtrl) listing 100 modems that stay down `--offline` seconds after
a reset. cmts-agent's own Fleet / Inventory / Resetter / reset journal (a fresh PostgreSQL database)
reset all 1,000 at once; each reset is a status read (the registration marker), its intent
recorded, its CMTS's SET, then status polls until the modem was seen down and back online.

The concurrency figure is measured at the emulators, from the SETs they logged: a modem is being
reset from its SET until it is back (SET + `--offline`); `peak_concurrent_resets_per_cmts` is the
most modems of one CMTS in that state at once. Prints one `name=value` per line, the settings used
first.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import sys
import time
from pathlib import Path

from cpu_split import tree_cpu

ROOT = Path(__file__).resolve().parents[1]
VENDORS = ("cisco", "casa", "arris", "docsis3")


def machine() -> str:
    cpus = os.cpu_count() or 0
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{platform.system()} {platform.machine()}, {cpus} CPUs, {model or 'unknown CPU'}"


async def run(args: argparse.Namespace) -> int:
    from pydantic import SecretStr

    from cmts_agent.fleet import Fleet
    from cmts_agent.inventory import Inventory
    from cmts_agent.journal import ModemLocks, ResetJournal
    from cmts_agent.resets import Resetter
    from cmts_agent.settings import CmtsProfile
    from lazaretto_core import db
    from lazaretto_lab.snmpd import LabCmts, LabModem
    from lazaretto_lab.testing import create_database, database_dsn, drop_database

    per_cmts = args.resets // args.cmtses
    started_setup = time.monotonic()
    labs: list[LabCmts] = []
    db_name = await create_database("bench_cmts")
    pool = None
    fleet = None
    resetter = None
    try:
        for c in range(args.cmtses):
            modems = [
                LabModem(f"00:10:{c:02x}:00:{m // 256:02x}:{m % 256:02x}", f"10.{c}.{m // 250}.{m % 250 + 1}")
                for m in range(per_cmts)
            ]
            labs.append(
                await asyncio.to_thread(
                    LabCmts(modems, vendor=VENDORS[c % len(VENDORS)], offline_seconds=args.offline).start
                )
            )
        profiles = [
            CmtsProfile(
                name=f"cmts{c}",
                host=lab.host,
                port=lab.port,
                vendor=lab.vendor,
                read_community=SecretStr(lab.ro_community),
                write_community=SecretStr(lab.rw_community),
                max_in_flight=args.limit,
                resets_per_second=args.rate,
                timeout=2.0,
                retries=2,
                verify_interval=args.interval,
                verify_max_wait=args.max_wait,
                offline_within=args.offline_within,
            )
            for c, lab in enumerate(labs)
        ]
        pool = await db.create_pool(database_dsn(db_name))
        await db.migrate(pool, db.package_migrations("cmts_agent"))
        fleet = Fleet(profiles)
        inventory = Inventory(pool, fleet)
        walk_started = time.monotonic()
        walks = await inventory.refresh()
        inventory_seconds = time.monotonic() - walk_started
        if any(w.error for w in walks):
            print(f"inventory walk failed: {[w.error for w in walks if w.error]}", file=sys.stderr)
            return 1
        journal = ResetJournal(pool, ModemLocks(database_dsn(db_name)))
        resetter = Resetter(fleet, inventory, journal, global_max_in_flight=args.cmtses * args.limit)
        setup_seconds = time.monotonic() - started_setup

        macs = [m["cm_mac"] for lab in labs for m in lab.modems]
        emulator_cpu_before = sum(tree_cpu(lab.process.pid) for lab in labs if lab.process)
        started, cpu_started = time.monotonic(), time.process_time()
        results = await asyncio.gather(*(resetter.reset(mac) for mac in macs), return_exceptions=True)
        seconds, agent_cpu = time.monotonic() - started, time.process_time() - cpu_started
        emulator_cpu = sum(tree_cpu(lab.process.pid) for lab in labs if lab.process)
        emulator_cpu -= emulator_cpu_before

        failed = [r for r in results if isinstance(r, BaseException) or not r.ok]
        reports = [r for r in results if not isinstance(r, BaseException)]
        back = sorted(r.verification.seconds_to_online or 0.0 for r in reports if r.ok)
        set_times = [[float(s["ts"]) for s in lab.sets() if s.get("reset")] for lab in labs]
        logged = sum(len(times) for times in set_times)
        print(f"machine={machine()}")
        print(f"cmtses={args.cmtses}")
        print(f"per_cmts_limit={args.limit}")
        print(f"pacing_resets_per_second={args.rate}")
        print(f"offline_seconds={args.offline}")
        print(f"verify_interval={args.interval}")
        print(f"offline_within={args.offline_within}")
        print(f"verify_max_wait={args.max_wait}")
        print(f"setup_seconds={setup_seconds:.2f}")
        print(f"inventory_walk_seconds={inventory_seconds:.3f}")
        print(f"inventory_modems={sum(w.modems for w in walks)}")
        print(f"resets={len(macs)}")
        print(f"seconds={seconds:.2f}")
        print(f"resets_per_second={len(macs) / seconds:.1f}")
        print(f"failed={len(failed)}")
        print(f"sets_logged_by_emulators={logged}")
        print(f"peak_concurrent_resets_per_cmts={max(peak_overlap(t, args.offline) for t in set_times)}")
        print(f"peak_sets_in_one_second_per_cmts={max(peak_in_window(t, 1.0) for t in set_times)}")
        print(f"agent_peak_slots_per_cmts={max(c.peak_in_flight for c in fleet.all())}")
        if back:
            print(f"seconds_to_online_p50={back[len(back) // 2]:.2f}")
            print(f"seconds_to_online_max={back[-1]:.2f}")
        # Where the time goes: the agent's own CPU (one process: it cannot use more than one core),
        # the emulated CMTSes' CPU (snmpd and its emulator processes), the status polls per reset,
        # and, from the emulators' SET logs, how long a reset slot is busy beyond the modem's outage
        # (the SET of the reset that took over a slot minus the end of the outage it waited for).
        polls = sorted(a.verification.polls for a in reports)
        overheads = sorted(o for times in set_times for o in slot_overheads(times, args.limit, args.offline))
        print(f"agent_cpu_seconds={agent_cpu:.2f}")
        print(f"agent_cpu_ms_per_reset={agent_cpu * 1000 / len(macs):.1f}")
        print(f"emulators_cpu_seconds={emulator_cpu:.2f}")
        if polls:
            print(f"status_polls_per_reset_p50={polls[len(polls) // 2]}")
        if overheads:
            print(f"slot_overhead_ms_p50={overheads[len(overheads) // 2] * 1000:.0f}")
            print(f"slot_overhead_ms_p90={overheads[int(len(overheads) * 0.9)] * 1000:.0f}")
        print(f"load_average_1m={os.getloadavg()[0]:.1f}")
        for error in failed[:3]:
            print(f"# failure: {error!r}"[:300], file=sys.stderr)
        return 0 if not failed else 1
    finally:
        if resetter is not None:
            await resetter.close()
        if fleet is not None:
            await fleet.close()
        if pool is not None:
            await pool.close()
        for lab in labs:
            lab.stop()
        await drop_database(db_name)


def slot_overheads(starts: list[float], limit: int, outage: float) -> list[float]:
    """With `limit` slots busy, SET k waited for a slot freed by SET k - limit: what passed between
    the end of that modem's outage and SET k (verification noticing it back, records, the next read)."""
    ordered = sorted(starts)
    return [max(0.0, t - (ordered[k - limit] + outage)) for k, t in enumerate(ordered) if k >= limit]


def peak_overlap(starts: list[float], duration: float) -> int:
    """Most intervals [start, start + duration) open at once."""
    events = sorted([(t, 1) for t in starts] + [(t + duration, -1) for t in starts])  # ends first on ties
    peak = now = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    return peak


def peak_in_window(times: list[float], window: float) -> int:
    """Most events within any `window` seconds."""
    ordered = sorted(times)
    peak = first = 0
    for last, t in enumerate(ordered):
        while t - ordered[first] >= window:
            first += 1
        peak = max(peak, last - first + 1)
    return peak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resets", type=int, default=1000)
    parser.add_argument("--cmtses", type=int, default=10)
    parser.add_argument("--limit", type=int, default=10, help="resets in flight per CMTS")
    parser.add_argument("--rate", type=float, default=100.0, help="reset SETs per second per CMTS")
    parser.add_argument("--offline", type=float, default=0.5, help="seconds an emulated modem stays down")
    parser.add_argument("--interval", type=float, default=0.1, help="verification poll interval")
    parser.add_argument("--offline-within", type=float, default=10.0, help="must be seen down within")
    parser.add_argument("--max-wait", type=float, default=30.0, help="must be back within")
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
