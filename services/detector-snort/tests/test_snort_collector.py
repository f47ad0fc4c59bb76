"""The collector policy: long-lived objects frozen now and then, and a cycle that became garbage
after it was frozen still freed by the rare full collection."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from detector_snort.collector import FREEZE_EVERY, FULL_EVERY, CollectorPolicy


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


@pytest.fixture(autouse=True)
def _unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()  # the rest of the test session collects as usual


def test_what_is_alive_is_frozen() -> None:
    kept = [_Node() for _ in range(100)]
    CollectorPolicy(clock=lambda: 0.0).freeze()
    assert gc.get_freeze_count() >= len(kept)


def test_a_frozen_cycle_that_became_garbage_is_freed_by_the_full_collection() -> None:
    now = 0.0
    policy = CollectorPolicy(clock=lambda: now)
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    alive = weakref.ref(a)
    policy.freeze()
    del a, b  # garbage now, but a cycle: only the collector frees it, and it is frozen
    gc.collect()
    assert alive() is not None
    policy.freeze()  # not yet due: stays frozen
    assert alive() is not None
    now = FULL_EVERY
    policy.freeze()
    assert alive() is None


async def test_the_service_loop_freezes_at_its_first_turn_then_every_freeze_interval() -> None:
    now = 0.0
    policy = CollectorPolicy(clock=lambda: now)
    await policy.turn()
    frozen = gc.get_freeze_count()
    assert frozen > 0
    gc.unfreeze()
    now = FREEZE_EVERY / 2
    await policy.turn()  # not due
    assert gc.get_freeze_count() == 0
    now = FREEZE_EVERY
    await policy.turn()
    assert gc.get_freeze_count() > 0


def test_release_gives_the_frozen_objects_back_to_the_collector() -> None:
    policy = CollectorPolicy(clock=lambda: 0.0)
    policy.freeze()
    assert gc.get_freeze_count() > 0
    policy.release()
    assert gc.get_freeze_count() == 0
