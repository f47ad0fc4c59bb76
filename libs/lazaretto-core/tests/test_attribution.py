"""Attribution answers: examples validate, MACs normalise, a versioned schema keeps its fields."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydantic
import pytest

from lazaretto_core.attribution import ALL_ANSWERS, DeviceLeases, HolderLeases, LeaseHolders, LeaseInterval

SCHEMAS = Path(__file__).parent / "schemas"


@pytest.mark.parametrize("answer", ALL_ANSWERS, ids=lambda a: a.__name__)
def test_example_validates_and_round_trips(answer: type[pydantic.BaseModel]) -> None:
    example: dict[str, Any] = answer.example  # type: ignore[attr-defined]
    parsed = answer.model_validate(example)
    assert answer.model_validate_json(parsed.model_dump_json()) == parsed


@pytest.mark.parametrize("answer", ALL_ANSWERS, ids=lambda a: a.__name__)
def test_schema_kept_every_field_and_type(answer: type[pydantic.BaseModel]) -> None:
    snapshot_file = SCHEMAS / f"attribution.{answer.__name__}.json"
    current = answer.model_json_schema()
    if not snapshot_file.exists():  # a new answer: record its first schema
        snapshot_file.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    snapshot: dict[str, Any] = json.loads(snapshot_file.read_text())
    for name, prop in snapshot["properties"].items():
        assert name in current["properties"], f"{answer.__name__} lost field {name}"
        assert current["properties"][name] == prop, f"{answer.__name__} retyped field {name}"
    assert set(current.get("required", [])) <= set(snapshot.get("required", [])), "a new required field"


def test_holders_normalise_macs_and_count_distinct_devices() -> None:
    one = dict(LeaseInterval.example, mac="02-00-00-00-00-01")
    renewed = dict(LeaseInterval.example, mac="0200.0000.0001", ended="expired")
    holders = LeaseHolders.model_validate(dict(LeaseHolders.example, holders=[one, renewed]))
    assert holders.macs == frozenset({"02:00:00:00:00:01"})


def test_interval_rejects_naive_times_reversed_intervals_and_unknown_versions() -> None:
    with pytest.raises(pydantic.ValidationError):
        LeaseInterval.model_validate(dict(LeaseInterval.example, valid_from="2026-11-26T04:00:00"))
    with pytest.raises(pydantic.ValidationError, match="valid_until before valid_from"):
        LeaseInterval.model_validate(dict(LeaseInterval.example, valid_until="2026-11-26T03:00:00+00:00"))
    with pytest.raises(pydantic.ValidationError):
        LeaseHolders.model_validate(dict(LeaseHolders.example, schema_version=2))


def test_covers_is_half_open() -> None:
    interval = LeaseInterval.model_validate(LeaseInterval.example)
    assert interval.covers(datetime(2026, 11, 26, 4, 0, tzinfo=UTC))
    assert not interval.covers(datetime(2026, 11, 26, 5, 0, tzinfo=UTC))


def test_holder_leases_follow_only_the_sole_holder() -> None:
    other = dict(DeviceLeases.example, mac="02:00:00:00:00:02")
    with pytest.raises(pydantic.ValidationError, match="not the sole holder"):
        HolderLeases.model_validate({"holders": LeaseHolders.example, "device": other})
    nobody = dict(LeaseHolders.example, holders=[])
    with pytest.raises(pydantic.ValidationError, match="not the sole holder"):
        HolderLeases.model_validate({"holders": nobody, "device": DeviceLeases.example})
    assert HolderLeases.model_validate({"holders": nobody, "device": None}).device is None
