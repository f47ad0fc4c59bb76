"""The short fuzz run of `make test`: every parser target gets a few seconds of hostile input and none
may raise anything but its documented rejection (the long run is `make fuzz`)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from engine import run_target
from targets import all_targets

SECONDS_PER_TARGET = 1.0
TARGETS = {target.name: target for target in all_targets()}


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_parser_survives_hostile_input(name: str) -> None:
    result = run_target(TARGETS[name], count=20_000, seconds=SECONDS_PER_TARGET)
    print(f"target={name} inputs={result.inputs} rejected={result.rejected} crashes={result.crashes}")
    assert result.inputs > 0
    assert result.crashes == 0, [(c.where, c.message, c.data) for c in result.examples]


def test_a_crash_is_counted_not_hidden() -> None:
    # The engine itself: a parser that breaks on some input is reported with the input that broke it.
    from targets import Target

    def brittle(data: bytes) -> None:
        if b"{" in data:
            raise KeyError("boom")
        raise ValueError("refused")

    result = run_target(Target("brittle", brittle, (ValueError,), (b'{"a": 1}',)), count=500)
    assert result.inputs >= 500
    assert result.crashes > 0
    assert result.examples[0].kind == "KeyError"
    assert b"{" in result.examples[0].data
