"""Reconcile: compare what each layer holds with the desired state, repair drift, count and log it.

Runs at start and then every `reconcile_interval` seconds. Each layer is reconciled on its own: one
that is down is logged and counted, and the others are still repaired.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

from prometheus_client import Counter, Histogram

from .desired import DesiredState, LayeredGarden
from .layers import Element, Layer

log = logging.getLogger(__name__)

DRIFT_REPAIRED = Counter(
    "lazaretto_provisioner_drift_repaired",
    "Garden elements a reconcile found out of line with the desired state and repaired.",
    ["layer", "kind"],  # kind: missing (desired, not in the layer) or extra (in the layer, not desired)
)
RECONCILE_FAILURES = Counter(
    "lazaretto_provisioner_reconcile_failures",
    "Reconciles of one layer that failed (the layer was down or refused).",
    ["layer"],
)
RECONCILE_SECONDS = Histogram(
    "lazaretto_provisioner_reconcile_seconds", "Duration of one full reconcile of every layer."
)


@dataclass
class ReconcileReport:
    missing: dict[str, list[Element]] = field(default_factory=dict)
    extra: dict[str, list[Element]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # each layer's reconcile, lock wait included

    @property
    def repaired(self) -> int:
        return sum(map(len, self.missing.values())) + sum(map(len, self.extra.values()))


class Reconciler:
    def __init__(self, garden: LayeredGarden, interval: float) -> None:
        self.garden = garden
        self.desired: DesiredState = garden.desired
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    async def reconcile(self) -> ReconcileReport:
        report = ReconcileReport()
        started = time.monotonic()
        for layer in self.garden.layers:
            layer_started = time.monotonic()
            try:
                async with self.garden.lock.held():
                    await self._reconcile_layer(layer, report)
            except Exception as exc:  # one layer down must not stop the others (counted, logged)
                RECONCILE_FAILURES.labels(layer.name).inc()
                report.failed[layer.name] = f"{type(exc).__name__}: {exc}"
                log.error("reconcile of layer %s failed, retried next round: %s", layer.name, exc)
            report.seconds[layer.name] = time.monotonic() - layer_started
        RECONCILE_SECONDS.observe(time.monotonic() - started)
        return report

    async def _reconcile_layer(self, layer: Layer, report: ReconcileReport) -> None:
        started = time.monotonic()
        wanted = {e for e in await self.desired.elements(layer.name, present=True) if layer.handles(e)}
        unwanted = {e for e in await self.desired.elements(layer.name, present=False) if layer.handles(e)}
        read = time.monotonic()
        actual = {e for e in await layer.list_elements(wanted | unwanted) if layer.handles(e)}
        listed = time.monotonic()
        missing = sorted(wanted - actual)
        extra = sorted(actual - wanted)
        if missing:
            await layer.apply_many(missing)
            for element in missing:
                log.warning(
                    "reconcile repaired drift: layer %s lacked %s %s", layer.name, element.kind, element.value
                )
            DRIFT_REPAIRED.labels(layer.name, "missing").inc(len(missing))
            report.missing[layer.name] = missing
        if extra:
            await layer.remove_many(extra)
            for element in extra:
                log.warning(
                    "reconcile repaired drift: layer %s held %s %s that is not desired",
                    layer.name,
                    element.kind,
                    element.value,
                )
            DRIFT_REPAIRED.labels(layer.name, "extra").inc(len(extra))
            report.extra[layer.name] = extra
        # Whatever was pending is in line now (the lock kept changes out): wanted ones are present,
        # unwanted ones absent.
        await self.desired.confirm_layer(layer.name)
        log.info(
            "reconciled layer %s: %d desired, %d missing, %d extra; desired state %.2fs, layer listed"
            " %.2fs, repaired and confirmed %.2fs",
            layer.name,
            len(wanted),
            len(missing),
            len(extra),
            read - started,
            listed - read,
            time.monotonic() - listed,
        )

    async def adopt_if_new(self) -> dict[str, int]:
        """With no desired state at all (first start, e.g. over a garden made before it existed), take
        what every layer holds as desired: never release a quarantine only because it was not recorded."""
        if not await self.desired.is_empty():
            return {}
        adopted: dict[str, int] = {}
        for layer in self.garden.layers:
            try:
                async with self.garden.lock.held():
                    held = {e for e in await layer.list_elements(()) if layer.handles(e)}
            except Exception as exc:  # the layer is down: it is reconciled (not adopted) later
                log.error("could not adopt what layer %s holds: %s", layer.name, exc)
                continue
            await self.desired.adopt(layer.name, held)
            adopted[layer.name] = len(held)
            if held:
                log.warning(
                    "adopted %d elements layer %s held before any desired state", len(held), layer.name
                )
        return adopted

    async def start(self) -> None:
        """Adopt an existing garden on the first start; one reconcile now, then one every `interval` s."""
        await self.adopt_if_new()
        await self.reconcile()
        self._task = asyncio.create_task(self._loop(), name="garden-reconcile")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.reconcile()
