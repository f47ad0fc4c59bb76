"""Every contract's example validates, and no published field was lost or retyped."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, get_args

import pydantic
import pytest

from lazaretto_core.contracts import (
    ALL_CONTRACTS,
    ATTEMPT_DETAIL_MAX,
    DETAIL_MAX,
    INT4_MAX,
    INT8_MAX,
    OPEN_STATES,
    QUARANTINED_STATES,
    RELEASABLE_STATES,
    RELEASING_STATES,
    AbuseObserved,
    AllowlistChanged,
    BreakerTripped,
    CaseState,
    Contract,
    GardenApplied,
    GardenApply,
    GardenFailed,
    GardenRemove,
    GardenRemoved,
    ModemResetCompleted,
    ModemResetFailed,
    ResetAttempt,
    normalize_mac,
    outside_text,
    saturated,
)

SCHEMAS = Path(__file__).parent / "schemas"


EXAMPLES = [
    pytest.param(contract, n, id=f"{contract.routing_key}-{n}")
    for contract in ALL_CONTRACTS
    for n in range(len(contract.examples))
]


@pytest.mark.parametrize(("contract", "n"), EXAMPLES)
def test_every_example_validates_and_round_trips(contract: type[Contract], n: int) -> None:
    message = contract.model_validate(contract.examples[n])
    assert contract.read(message.model_dump_json()) == message


@pytest.mark.parametrize("contract", ALL_CONTRACTS, ids=lambda c: c.routing_key)
def test_each_contract_has_several_examples_and_the_first_is_canonical(contract: type[Contract]) -> None:
    assert len(contract.examples) >= 2
    assert contract.example is contract.examples[0]


@pytest.mark.parametrize("contract", ALL_CONTRACTS, ids=lambda c: c.routing_key)
def test_schema_kept_every_field_and_type(contract: type[Contract]) -> None:
    """Given the schema snapshot of this major version, the current schema drops and retypes nothing."""
    snapshot_file = SCHEMAS / f"{contract.routing_key}.json"
    current = contract.model_json_schema()
    # A new contract's first schema is recorded on purpose (see the README), never by this test.
    assert snapshot_file.exists(), (
        f"no schema snapshot {snapshot_file.name}: record it on purpose and commit it, e.g. with\n"
        f"  .venv/bin/python -c 'import json, lazaretto_core.contracts as c;"
        f" print(json.dumps(c.{contract.__name__}.model_json_schema(), indent=2, sort_keys=True))'"
        f" > {snapshot_file}"
    )
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


@pytest.mark.parametrize("contract", ALL_CONTRACTS, ids=lambda c: c.routing_key)
def test_a_consumer_ignores_fields_a_newer_producer_added(contract: type[Contract]) -> None:
    """Given a message carrying a field this version does not know (a newer producer's, nested too)"""
    known = dict(contract.example)
    body = dict(known, added_in_a_later_minor_version={"any": "thing"})
    if contract is ModemResetCompleted:
        known["attempts"] = [{"method": "m", "outcome": "back_online"}]
        body["attempts"] = [{"method": "m", "outcome": "back_online", "newer": 1}]
    # When a consumer reads it, it gets exactly what it knows; building such a message stays an error
    message = contract.read(json.dumps(body))
    assert message == contract.model_validate(known)
    assert "added_in_a_later_minor_version" not in message.model_dump()
    with pytest.raises(pydantic.ValidationError, match="Extra inputs are not permitted"):
        contract.model_validate(body)


def test_a_consumer_still_rejects_bad_values_of_fields_it_knows() -> None:
    with pytest.raises(pydantic.ValidationError, match="severity"):
        AbuseObserved.read(json.dumps(dict(AbuseObserved.example, severity=9, newer=1)))


def test_paired_messages_are_siblings_not_one_a_kind_of_the_other() -> None:
    # A handler for applies must never be given a removal (isinstance dispatch, probes, typed waits).
    assert not issubclass(GardenRemove, GardenApply)
    assert not issubclass(GardenApply, GardenRemove)
    assert not issubclass(GardenRemoved, GardenApplied)
    assert GardenApply.model_fields.keys() == GardenRemove.model_fields.keys()
    assert GardenApplied.model_fields.keys() == GardenRemoved.model_fields.keys()


def test_reset_attempt_outcomes_are_a_closed_set() -> None:
    for outcome in ("auth_failure", "write_unanswered", "abandoned", "back_online", "timeout"):
        assert ResetAttempt(method="m", outcome=outcome).outcome == outcome
    with pytest.raises(pydantic.ValidationError):
        ResetAttempt.model_validate({"method": "m", "outcome": "went_fishing"})


def test_case_state_groupings_partition_the_states_as_the_flow_means_them() -> None:
    every: frozenset[str] = frozenset(get_args(CaseState))
    assert (
        QUARANTINED_STATES | RELEASING_STATES | {"open", "failed_retrying", "needs_operator", "held"} == every
    )
    assert not QUARANTINED_STATES & RELEASING_STATES
    assert every - OPEN_STATES == {"released"}
    assert {"quarantined", "needs_operator"} == RELEASABLE_STATES
    assert RELEASABLE_STATES <= OPEN_STATES


def test_unknown_fields_and_bad_values_are_rejected() -> None:
    bad = dict(AbuseObserved.example, severity=9)
    with pytest.raises(pydantic.ValidationError):
        AbuseObserved.model_validate(bad)
    with pytest.raises(pydantic.ValidationError):
        AbuseObserved.model_validate(dict(AbuseObserved.example, surprise=1))
    with pytest.raises(pydantic.ValidationError):
        AbuseObserved.model_validate(dict(AbuseObserved.example, ip="300.1.1.1"))


def test_evidence_fields_are_optional_and_revisions_have_their_own_message_ids() -> None:
    # An older producer's observation (no evidence fields) reads with the neutral defaults
    old = AbuseObserved.read(json.dumps(AbuseObserved.examples[1]))
    assert (old.revision, old.direction, old.established) == (0, "unknown", None)
    assert old.distinct_destinations is None
    assert old.app_protos == []
    assert old.interface is None
    assert old.message_key() == str(old.observation_id)
    # A later revision of the same observation has a message id of its own (an inbox lets it through)
    running = AbuseObserved.model_validate(AbuseObserved.examples[2])
    assert running.message_key() == f"{running.observation_id}/r56"
    with pytest.raises(pydantic.ValidationError):
        AbuseObserved.model_validate(dict(AbuseObserved.examples[2], app_protos=["x"] * 11))
    with pytest.raises(pydantic.ValidationError):
        AbuseObserved.model_validate(dict(AbuseObserved.examples[2], direction="sideways"))


TEXT_FIELDS = [
    pytest.param(contract, n, name, id=f"{contract.routing_key}-{n}-{name}")
    for contract in ALL_CONTRACTS
    for n, example in enumerate(contract.examples)
    for name, value in example.items()
    if isinstance(value, str)
]


@pytest.mark.parametrize(("contract", "n", "name"), TEXT_FIELDS)
def test_a_nul_in_any_text_field_is_refused_naming_the_field(
    contract: type[Contract], n: int, name: str
) -> None:
    """Given any example with a NUL added to one of its text fields (PostgreSQL text cannot hold it),
    a consumer's read refuses it, and the error names that field."""
    body = dict(contract.examples[n], **{name: contract.examples[n][name] + "\x00"})
    with pytest.raises(pydantic.ValidationError) as refused:
        contract.read(json.dumps(body))
    assert [e["loc"][0] for e in refused.value.errors()] == [name]


def refused_at(contract: type[Contract], body: dict[str, object], field: str) -> list[str]:
    """Building and reading `body` both fail, each with one error at `field`: their messages."""
    with pytest.raises(pydantic.ValidationError) as built:
        contract.model_validate(body)
    with pytest.raises(pydantic.ValidationError) as read:
        contract.read(json.dumps(body))
    messages = []
    for refused in (built, read):
        [error] = refused.value.errors()
        assert error["loc"] == (field,)
        messages.append(str(error["msg"]))
    return messages


@pytest.mark.parametrize(
    ("contract", "field", "value", "where"),
    [
        (AbuseObserved, "sensor", "ids\x00edge", "sensor"),
        (AbuseObserved, "signatures", ["1:1: ok", "1:2: bad\x00"], "signatures[1]"),
        (AbuseObserved, "evidence", {"note": "nul\x00here"}, "evidence.note"),
        (
            AbuseObserved,
            "evidence",
            {"destinations": ["TCP 192.0.2.1:25", "\x00x"]},
            "evidence.destinations[1]",
        ),
        (AbuseObserved, "evidence", {"hour": {"by": {"a\x00.example": 3}}}, "evidence.hour.by (a key)"),
        (GardenApply, "reason", "scan\x00", "reason"),
        (GardenApplied, "changes", ["kea: ok", "rpz: \x00"], "changes[1]"),
    ],
)
def test_a_nul_top_level_or_nested_is_refused_with_where_it_is(
    contract: type[Contract], field: str, value: object, where: str
) -> None:
    """Given a NUL in a top-level string, a list item, or a value or key of nested JSON (`evidence`),
    building or reading the message fails, and the reason says where and why."""
    body = dict(contract.example, **{field: value})
    for message in refused_at(contract, body, field):
        assert f"{where} holds a NUL character (U+0000), which PostgreSQL text cannot store" in message
    # the same message without the NUL is fine
    contract.model_validate(json.loads(json.dumps(body).replace("\\u0000", "")))


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize(
    ("body", "where"),
    [
        ('{{"rate": {token}}}', "evidence.rate"),
        ('{{"hour": {{"by": [1.5, {token}]}}}}', "evidence.hour.by[1]"),
    ],
)
def test_a_number_jsonb_cannot_store_in_the_evidence_is_refused_with_where_it_is(
    token: str, body: str, where: str
) -> None:
    """Given evidence holding NaN or an infinity (Python's JSON reads and writes those tokens; PostgreSQL's
    jsonb refuses them, which would fail policy's whole batch), reading the message fails, saying where."""
    message = json.dumps(dict(AbuseObserved.example, evidence={})).replace(
        '"evidence": {}', '"evidence": ' + body.format(token=token)
    )
    with pytest.raises(pydantic.ValidationError) as refused:
        AbuseObserved.read(message)
    [error] = refused.value.errors()
    assert error["loc"] == ("evidence",)
    assert f"{where} holds a number that is not finite (NaN or infinity)" in error["msg"]
    # and a finite number there is fine
    AbuseObserved.read(message.replace(token, "2.5"))


def test_a_nul_in_a_nested_model_is_refused_at_its_field() -> None:
    # Given a reset attempt (a model nested in the message) whose detail holds a NUL
    body = dict(
        ModemResetCompleted.example,
        attempts=[{"method": "cisco-cdxCmCpeResetNow", "outcome": "rejected", "detail": "no\x00SuchName"}],
    )
    with pytest.raises(pydantic.ValidationError) as refused:
        ModemResetCompleted.read(json.dumps(body))
    [error] = refused.value.errors()
    assert error["loc"] == ("attempts", 0, "detail")
    assert "NUL character" in error["msg"]


# Every integer field a service stores in PostgreSQL, and the largest value its column holds: policy's
# `observations` and `attribution_pending` (int), `breaker_trips` (int), the executors' allowlist
# copies (bigint).
STORED_INTEGERS: list[tuple[type[Contract], str, int]] = [
    (AbuseObserved, "count", INT4_MAX),
    (AbuseObserved, "revision", INT4_MAX),
    (AbuseObserved, "distinct_destinations", INT4_MAX),
    (AbuseObserved, "distinct_dst_ports", INT4_MAX),
    (BreakerTripped, "count", INT4_MAX),
    (BreakerTripped, "limit", INT4_MAX),
    (AllowlistChanged, "version", INT8_MAX),
]


@pytest.mark.parametrize(
    ("contract", "field", "bound"),
    STORED_INTEGERS,
    ids=[f"{c.routing_key}-{f}" for c, f, _ in STORED_INTEGERS],
)
def test_an_integer_its_column_cannot_hold_is_refused_naming_the_field(
    contract: type[Contract], field: str, bound: int
) -> None:
    """Given an integer one over what its PostgreSQL column holds (or 2**40, or 2**64: a buggy or
    hostile producer's), building or reading the message fails naming the field; the bound is taken."""
    for value in (bound + 1, 2**40, 2**64):
        if value <= bound:
            continue
        for message in refused_at(contract, dict(contract.example, **{field: value}), field):
            assert f"less than or equal to {bound}" in message
    assert getattr(contract.read(json.dumps(dict(contract.example, **{field: bound}))), field) == bound


def _integers(schema: dict[str, Any], where: str) -> list[tuple[str, dict[str, Any]]]:
    """Every integer in a JSON schema, with where it is (nested models and optional fields too)."""
    found: list[tuple[str, dict[str, Any]]] = []
    if schema.get("type") == "integer":
        found.append((where, schema))
    for name, prop in schema.get("properties", {}).items():
        found += _integers(prop, f"{where}.{name}")
    for n, option in enumerate(schema.get("anyOf", [])):
        found += _integers(option, f"{where}|{n}")
    for name, nested in schema.get("$defs", {}).items():
        found += _integers(nested, f"$defs.{name}")
    if isinstance(schema.get("items"), dict):
        found += _integers(schema["items"], f"{where}[]")
    return found


@pytest.mark.parametrize("contract", ALL_CONTRACTS, ids=lambda c: c.routing_key)
def test_every_integer_of_a_contract_has_an_upper_bound(contract: type[Contract]) -> None:
    """A contract's integer without a maximum would take a value no PostgreSQL integer column holds:
    a new one is bounded by what stores it (`INT4_MAX` for an int column) when it is added."""
    integers = _integers(contract.model_json_schema(), contract.routing_key)
    unbounded = [where for where, schema in integers if not schema.get("maximum", INT8_MAX + 1) <= INT8_MAX]
    assert unbounded == []


def test_a_counter_saturates_at_the_bound_of_an_int_column() -> None:
    assert [saturated(n) for n in (0, 1, INT4_MAX - 1, INT4_MAX, INT4_MAX + 1, 2**40)] == [
        0,
        1,
        INT4_MAX - 1,
        INT4_MAX,
        INT4_MAX,
        INT4_MAX,
    ]
    # a saturated count makes a valid message
    assert AbuseObserved.model_validate(dict(AbuseObserved.example, count=saturated(2**40))).count == INT4_MAX


def test_outside_text_escapes_control_characters_and_keeps_to_the_fields_bound() -> None:
    """What an executor reports of an outside system's error: readable on one line, never refused."""
    assert (
        outside_text("BIND: refused\x00 zone\nquarantine.rpz", DETAIL_MAX)
        == "BIND: refused\\x00 zone\\nquarantine.rpz"
    )
    assert outside_text("plain text stays as it is", DETAIL_MAX) == "plain text stays as it is"
    assert outside_text("x" * 5000, DETAIL_MAX) == "x" * DETAIL_MAX
    # The bounds are the contracts' own
    for contract in (GardenFailed, ModemResetFailed):
        assert contract.model_json_schema()["properties"]["detail"]["maxLength"] == DETAIL_MAX
    assert ResetAttempt.model_json_schema()["properties"]["detail"]["maxLength"] == ATTEMPT_DETAIL_MAX
