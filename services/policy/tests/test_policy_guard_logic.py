"""The breaker's arithmetic and the audit chain's link check. Pure."""

from __future__ import annotations

import hashlib
import json

from hypothesis import given
from hypothesis import strategies as st

from policy.audit import GENESIS, check_link
from policy.breaker import BreakerLimits, net_of, scopes_of, trips


def test_scopes_are_everything_the_cmts_and_the_neighbourhood() -> None:
    assert scopes_of("100.64.3.77", "cmts-north") == ("global", "cmts:cmts-north", "net:100.64.3.0/24")
    assert scopes_of("2001:db8:1:2::77", None) == ("global", "net:2001:db8:1:2::/64")
    limits = BreakerLimits()
    assert [limits.limit_of(s) for s in scopes_of("100.64.3.77", "c")] == [50, 20, 10]
    assert net_of("100.64.3.255") == "100.64.3.0/24"


@given(count=st.integers(min_value=0, max_value=1000), limit=st.integers(min_value=0, max_value=1000))
def test_more_than_the_limit_trips(count: int, limit: int) -> None:
    assert trips(count, limit) == (count + 1 > limit)


def chain(bodies: list[dict[str, object]]) -> list[dict[str, object]]:
    rows, prev = [], GENESIS
    for seq, detail in enumerate(bodies, start=1):
        body = json.dumps({"chain": "c", "seq": seq, "kind": "k", "actor": "a", "detail": detail})
        digest = hashlib.sha256(prev + body.encode()).digest()
        rows.append(
            {
                "chain": "c",
                "seq": seq,
                "kind": "k",
                "actor": "a",
                "body": body,
                "prev_hash": prev,
                "hash": digest,
            }
        )
        prev = digest
    return rows


@given(
    details=st.lists(st.dictionaries(st.text(max_size=5), st.integers()), min_size=2, max_size=8),
    data=st.data(),
)
def test_any_edit_breaks_the_link_it_touches(details: list[dict[str, object]], data: st.DataObject) -> None:
    rows = chain(details)
    prev = GENESIS
    for n, row in enumerate(rows, start=1):
        assert check_link(row, n, prev) is None
        prev = row["hash"]  # type: ignore[assignment]
    victim = data.draw(st.integers(min_value=0, max_value=len(rows) - 1))
    edited = dict(rows[victim], body=str(rows[victim]["body"]).replace('"a"', '"b"'))
    expected_prev = GENESIS if victim == 0 else rows[victim - 1]["hash"]
    assert "edited" in str(check_link(edited, victim + 1, expected_prev))  # type: ignore[arg-type]
    # Removing a row breaks the next one's link
    if victim + 1 < len(rows):
        assert check_link(rows[victim + 1], victim + 1, expected_prev) is not None  # type: ignore[arg-type]
