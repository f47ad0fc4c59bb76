"""Every contract's example validates, and no published field was lost or retyped."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pydantic
import pytest

from lazaretto_core.contracts import ALL_CONTRACTS, AbuseObserved, Contract, normalize_mac

SCHEMAS = Path(__file__).parent / "schemas"


@pytest.mark.parametrize("contract", ALL_CONTRACTS, ids=lambda c: c.routing_key)
def test_example_validates_and_round_trips(contract: type[Contract]) -> None:
    message = contract.model_validate(contract.example)
    assert contract.model_validate_json(message.model_dump_json()) == message


@pytest.mark.parametrize("contract", ALL_CONTRACTS, ids=lambda c: c.routing_key)
def test_schema_kept_every_field_and_type(contract: type[Contract]) -> None:
    """Given the schema snapshot of this major version, the current schema drops and retypes nothing."""
    snapshot_file = SCHEMAS / f"{contract.routing_key}.json"
    current = contract.model_json_schema()
    if not snapshot_file.exists():  # a new contract: record its first schema
        snapshot_file.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    snapshot: dict[str, Any] = json.loads(snapshot_file.read_text())
    for name, prop in snapshot["properties"].items():
        assert name in current["properties"], f"{contract.routing_key} lost field {name}"
        assert current["properties"][name] == prop, f"{contract.routing_key} retyped field {name}"
    assert set(current.get("required", [])) <= set(snapshot.get("required", [])), "a new required field"


def test_routing_keys_carry_a_major_version() -> None:
    keys = [c.routing_key for c in ALL_CONTRACTS]
    assert len(keys) == len(set(keys))
    assert all(k.rsplit(".", 1)[-1].startswith("v") for k in keys)


def test_mac_forms_normalise() -> None:
    assert normalize_mac("0002.8AD3.7C6E") == "00:02:8a:d3:7c:6e"
    assert normalize_mac("00-02-8a-d3-7c-6e") == "00:02:8a:d3:7c:6e"
    with pytest.raises(ValueError, match="not a MAC"):
        normalize_mac("00:02:8a")


def test_unknown_fields_and_bad_values_are_rejected() -> None:
    bad = dict(AbuseObserved.example, severity=9)
    with pytest.raises(pydantic.ValidationError):
        AbuseObserved.model_validate(bad)
    with pytest.raises(pydantic.ValidationError):
        AbuseObserved.model_validate(dict(AbuseObserved.example, surprise=1))
    with pytest.raises(pydantic.ValidationError):
        AbuseObserved.model_validate(dict(AbuseObserved.example, ip="300.1.1.1"))
