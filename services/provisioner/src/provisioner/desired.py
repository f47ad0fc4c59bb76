"""Desired state of the garden in provisioner's own database, and applying it layer by layer.

`DesiredState` records, per layer, which elements should be present (or absent) and whether the
layer confirmed it. `LayeredGarden.apply`/`remove` record first (every layer's wish in one statement),
then push each layer's part as one batch, the layers concurrently, and record what they confirmed in
one statement: a layer that fails keeps its rows unconfirmed (with the error) for the next try or the next
reconcile, and never stops the other layers. A case counts as applied only once every layer confirmed.

Several cases can hold one element (a PC under its own case and its household's): `garden_hold` records
each case's hold, and a remove un-gardens only the elements no other case still holds.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import asyncpg

from .garden_lock import GardenLock
from .layers import Element, Layer

log = logging.getLogger(__name__)


class DesiredState:
    """The `garden_desired` table (migrations/provisioner_0001_desired_state.sql)."""

    def __init__(self, pool: asyncpg.Pool[asyncpg.Record]) -> None:
        self._pool = pool

    @property
    def pool(self) -> asyncpg.Pool[asyncpg.Record]:
        return self._pool

    async def want_layers(
        self, wanted: Mapping[str, Iterable[Element]], *, present: bool, case_id: uuid.UUID | None
    ) -> None:
        """Record that each layer should hold (or not) its elements, unconfirmed until it says so, for
        every layer in one statement (one round trip and one commit)."""
        rows = [(layer, e.kind, e.value, case_id, present) for layer, els in wanted.items() for e in els]
        if not rows:
            return
        layers, kinds, values = (list(column) for column in zip(*(r[:3] for r in rows), strict=True))
        # Every new wish is unconfirmed until the layer says so, even one equal to the last.
        await self._pool.execute(
            "INSERT INTO garden_desired (layer, kind, value, case_id, present)"
            " SELECT layer, kind, value, $4, $5 FROM unnest($1::text[], $2::text[], $3::text[])"
            "   AS e(layer, kind, value)"
            " ON CONFLICT (layer, kind, value) DO UPDATE SET case_id = EXCLUDED.case_id,"
            " present = EXCLUDED.present, confirmed_at = NULL, last_error = NULL, updated_at = now()",
            layers,
            kinds,
            values,
            case_id,
            present,
        )

    async def confirm_layers(self, confirmed: Mapping[str, Iterable[Element]], *, present: bool) -> None:
        """Mark each layer's elements as confirmed by that layer, for every layer in one statement."""
        rows = [(layer, e.kind, e.value) for layer, els in confirmed.items() for e in els]
        if not rows:
            return
        layers, kinds, values = (list(column) for column in zip(*rows, strict=True))
        await self._pool.execute(
            "UPDATE garden_desired SET confirmed_at = now(), last_error = NULL"
            " FROM unnest($1::text[], $2::text[], $3::text[]) AS e(layer, kind, value)"
            " WHERE garden_desired.layer = e.layer AND garden_desired.kind = e.kind"
            "   AND garden_desired.value = e.value AND present = $4",
            layers,
            kinds,
            values,
            present,
        )

    async def confirm_layer(self, layer: str) -> int:
        """Mark everything pending in `layer` confirmed (after a reconcile put the layer in line)."""
        status = await self._pool.execute(
            "UPDATE garden_desired SET confirmed_at = now(), last_error = NULL"
            " WHERE layer = $1 AND confirmed_at IS NULL",
            layer,
        )
        return int(status.split()[-1])

    async def failed(self, layer: str, elements: Iterable[Element], error: str) -> None:
        kinds, values = _columns(elements)
        await self._pool.execute(
            "UPDATE garden_desired SET last_error = $4 FROM unnest($2::text[], $3::text[]) AS e(kind, value)"
            " WHERE layer = $1 AND garden_desired.kind = e.kind AND garden_desired.value = e.value",
            layer,
            kinds,
            values,
            error[:500],
        )

    async def elements(self, layer: str, *, present: bool) -> set[Element]:
        rows = await self._pool.fetch(
            "SELECT kind, value FROM garden_desired WHERE layer = $1 AND present = $2", layer, present
        )
        return {Element(r["kind"], r["value"]) for r in rows}

    async def pending(self, layer: str, *, present: bool) -> set[Element]:
        rows = await self._pool.fetch(
            "SELECT kind, value FROM garden_desired"
            " WHERE layer = $1 AND present = $2 AND confirmed_at IS NULL",
            layer,
            present,
        )
        return {Element(r["kind"], r["value"]) for r in rows}

    async def is_empty(self) -> bool:
        return not await self._pool.fetchval("SELECT EXISTS (SELECT 1 FROM garden_desired)")

    async def adopt(self, layer: str, elements: Iterable[Element]) -> None:
        """Record what `layer` holds as desired and confirmed (first start over an existing garden)."""
        rows = [(layer, e.kind, e.value) for e in elements]
        await self._pool.executemany(
            "INSERT INTO garden_desired (layer, kind, value, present, confirmed_at)"
            " VALUES ($1, $2, $3, true, now()) ON CONFLICT DO NOTHING",
            rows,
        )

    async def case_elements(self, case_id: uuid.UUID) -> set[Element]:
        """What `case_id` holds (asked to be present and has not released), in any layer."""
        rows = await self._pool.fetch("SELECT kind, value FROM garden_hold WHERE case_id = $1", case_id)
        return {Element(r["kind"], r["value"]) for r in rows}

    async def hold(self, elements: Iterable[Element], case_ids: Iterable[uuid.UUID]) -> None:
        """Record that each case holds each element (again: no change)."""
        rows = [(e.kind, e.value, case) for e in elements for case in case_ids]
        if not rows:
            return
        kinds, values, cases = (list(column) for column in zip(*rows, strict=True))
        await self._pool.execute(
            "INSERT INTO garden_hold (kind, value, case_id)"
            " SELECT * FROM unnest($1::text[], $2::text[], $3::uuid[]) ON CONFLICT DO NOTHING",
            kinds,
            values,
            cases,
        )

    async def release(self, elements: Iterable[Element], case_id: uuid.UUID | None) -> list[Element]:
        """Drop `case_id`'s hold on each element (None: every case's) and return the elements no other
        case holds: those alone may leave the layers."""
        items = list(dict.fromkeys(elements))
        if not items:
            return []
        kinds, values = _columns(items)
        # The outer query sees the holds as they were before the DELETE: hence `case_id <> $3`.
        rows = await self._pool.fetch(
            "WITH e AS (SELECT * FROM unnest($1::text[], $2::text[]) AS e(kind, value)),"
            " dropped AS (DELETE FROM garden_hold h USING e WHERE h.kind = e.kind AND h.value = e.value"
            "   AND ($3::uuid IS NULL OR h.case_id = $3))"
            " SELECT e.kind, e.value FROM e WHERE NOT EXISTS (SELECT 1 FROM garden_hold h"
            "   WHERE h.kind = e.kind AND h.value = e.value AND $3::uuid IS NOT NULL AND h.case_id <> $3)",
            kinds,
            values,
            case_id,
        )
        released = {Element(r["kind"], r["value"]) for r in rows}
        return [e for e in items if e in released]

    async def holders(self, element: Element, *, besides: uuid.UUID | None = None) -> list[uuid.UUID]:
        """The cases that hold `element` (other than `besides`), oldest hold first."""
        rows = await self._pool.fetch(
            "SELECT case_id FROM garden_hold WHERE kind = $1 AND value = $2"
            " AND case_id IS DISTINCT FROM $3 ORDER BY held_since, case_id",
            element.kind,
            element.value,
            besides,
        )
        return [r["case_id"] for r in rows]

    async def unconfirmed_layers(self, case_id: uuid.UUID) -> list[str]:
        rows = await self._pool.fetch(
            "SELECT DISTINCT layer FROM garden_desired"
            " WHERE case_id = $1 AND confirmed_at IS NULL ORDER BY 1",
            case_id,
        )
        return [r["layer"] for r in rows]

    async def forget_absent_confirmed(self, layer: str, elements: Iterable[Element]) -> None:
        """Drop removal rows the layer confirmed and nobody needs checked any more."""
        kinds, values = _columns(elements)
        await self._pool.execute(
            "DELETE FROM garden_desired USING unnest($2::text[], $3::text[]) AS e(kind, value)"
            " WHERE layer = $1 AND garden_desired.kind = e.kind AND garden_desired.value = e.value"
            "   AND NOT present AND confirmed_at IS NOT NULL",
            layer,
            kinds,
            values,
        )


def _columns(elements: Iterable[Element]) -> tuple[list[str], list[str]]:
    items = list(elements)
    return [e.kind for e in items], [e.value for e in items]


@dataclass
class LayerOutcome:
    """What one apply/remove did: layers that confirmed, and the error of each that did not."""

    confirmed: list[str] = field(default_factory=list)
    failed: dict[str, Exception] = field(default_factory=dict)
    # A remove's elements that another case still holds: left in every layer.
    kept: list[Element] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.failed

    @property
    def transient(self) -> bool:
        return all(getattr(exc, "transient", True) for exc in self.failed.values())


class LayeredGarden:
    """Applies and removes elements in every configured layer, through the desired state."""

    def __init__(self, layers: Sequence[Layer], desired: DesiredState) -> None:
        names = [layer.name for layer in layers]
        if len(set(names)) != len(names):
            raise ValueError(f"layer names must be unique: {names}")
        self.layers = list(layers)
        self.desired = desired
        # Held by every change and by each layer's reconcile, in every replica: a reconcile that listed
        # a layer before an apply recorded its wish would otherwise remove what the apply just added.
        self.lock = GardenLock(desired.pool)

    def for_layer(self, layer: Layer, elements: Iterable[Element]) -> list[Element]:
        return sorted({e for e in elements if layer.handles(e)})

    async def apply(self, elements: Iterable[Element], case_id: uuid.UUID | None) -> LayerOutcome:
        """Garden the elements, held by `case_id` (None: the provisioner's own, e.g. a pool's trigger)."""
        items = list(elements)
        async with self.lock.held():
            if case_id is not None:
                await self.desired.hold(items, [case_id])
            return await self._change_locked(items, case_id, present=True)

    async def remove(self, elements: Iterable[Element], case_id: uuid.UUID | None) -> LayerOutcome:
        """Drop `case_id`'s hold and un-garden the elements no other case holds (`outcome.kept` lists the
        others). None drops every case's hold: the provisioner's own removal (an address its device left)."""
        items = list(elements)
        async with self.lock.held():
            released = await self.desired.release(items, case_id)
            outcome = await self._change_locked(released, case_id, present=False)
            outcome.kept = [e for e in items if e not in set(released)]
            return outcome

    async def _change_locked(
        self, elements: list[Element], case_id: uuid.UUID | None, *, present: bool
    ) -> LayerOutcome:
        outcome = LayerOutcome()
        wanted: Mapping[str, list[Element]] = {
            layer.name: self.for_layer(layer, elements) for layer in self.layers
        }
        await self.desired.want_layers(wanted, present=present, case_id=case_id)
        # The layers are independent (Kea's database, BIND, the packet filter): pushed concurrently,
        # a change takes as long as its slowest layer, not the sum of them.
        busy = [layer for layer in self.layers if wanted[layer.name]]
        results = await asyncio.gather(
            *(self._push(layer, wanted[layer.name], present) for layer in busy), return_exceptions=True
        )
        confirmed: dict[str, list[Element]] = {}
        for layer, result in zip(busy, results, strict=True):
            if isinstance(result, Exception):  # any layer's failure: recorded, reported, retried
                log.warning(
                    "garden layer %s %s failed: %s", layer.name, "apply" if present else "remove", result
                )
                await self.desired.failed(
                    layer.name, wanted[layer.name], f"{type(result).__name__}: {result}"
                )
                outcome.failed[layer.name] = result
            elif isinstance(result, BaseException):
                raise result  # cancelled: not a layer's failure
            else:
                confirmed[layer.name] = wanted[layer.name]
        await self.desired.confirm_layers(confirmed, present=present)
        outcome.confirmed = [
            layer.name for layer in self.layers if layer.name in confirmed or not wanted[layer.name]
        ]
        return outcome

    @staticmethod
    async def _push(layer: Layer, elements: list[Element], present: bool) -> None:
        if present:
            await layer.apply_many(elements)
        else:
            await layer.remove_many(elements)
