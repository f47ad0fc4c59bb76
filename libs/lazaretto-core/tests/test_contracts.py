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


@pytest.mark.parametrize(
    "text",
    [
        "00:1a:2b:3c:4d:5e",
        "00:1A:2B:3C:4D:5E",
        "00-1a-2b-3c-4d-5e",
        "001a.2b3c.4d5e",
        "001A2B3C4D5E",
        " 001a2b3c4d5e ",
    ],
)
def test_mac_forms_normalise(text: str) -> None:
    assert normalize_mac(text) == "00:1a:2b:3c:4d:5e"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "00:02:8a",
        "00:1a:2b:3c:4d:5e:6f",
        "00:1a-2b:3c:4d:5e",
        "zz:1a:2b:3c:4d:5e",
        "0:1a:2b:3c:4d:5e",
        "00 1a 2b 3c 4d 5e",
    ],
)
def test_bad_macs_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a MAC"):
        normalize_mac(text)


def test_unknown_fields_and_bad_values_are_rejected() -> None:
    bad = dict(AbuseObserved.example, severity=9)
    with pytest.raises(pydantic.ValidationError):
        AbuseObserved.model_validate(bad)
    with pytest.raises(pydantic.ValidationError):
        AbuseObserved.model_validate(dict(AbuseObserved.example, surprise=1))
    with pytest.raises(pydantic.ValidationError):
        AbuseObserved.model_validate(dict(AbuseObserved.example, ip="300.1.1.1"))
