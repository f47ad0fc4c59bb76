"""The quarantine list follows each case's device: a case's address is replaced when policy announces a
move, and the case's entry goes on release whichever address the release names."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from detector_smtp.quarantine import QuarantineList
from detector_smtp.state import _quarantined_cases
from lazaretto_core.contracts import CaseChanged


def change(
    case_id: uuid.UUID, ip: str, state: str, category: str | None = "spam", at: datetime | None = None
) -> CaseChanged:
    return CaseChanged(
        case_id=case_id,
        state=state,
        reason="test",
        scope="cpe",
        ip=ip,
        changed_at=at or datetime.now(UTC),
        category=category,
    )


def test_a_moved_case_is_quarantined_at_its_new_address_only() -> None:
    quarantine, case = QuarantineList(), uuid.uuid4()
    assert quarantine.apply(change(case, "100.64.0.5", "quarantined"))
    # When policy announces the device moved to another address
    assert quarantine.apply(change(case, "100.64.0.9", "quarantined"))
    # Then the new address is refused and the old one (maybe someone else's now) is not
    assert "100.64.0.9" in quarantine
    assert "100.64.0.5" not in quarantine
    assert len(quarantine) == 1
    # And the release, which names the current address, empties the list
    assert quarantine.apply(change(case, "100.64.0.9", "release_requested"))
    assert "100.64.0.9" not in quarantine
    assert len(quarantine) == 0


def test_a_release_naming_another_address_still_drops_the_case() -> None:
    quarantine, case = QuarantineList(), uuid.uuid4()
    quarantine.apply(change(case, "100.64.0.5", "quarantined"))
    # The release may carry an address the list never saw (the move's event was lost or reordered)
    assert quarantine.apply(change(case, "100.64.0.7", "released"))
    assert "100.64.0.5" not in quarantine
    assert quarantine.as_dict() == {}


def test_an_address_shared_by_two_cases_stays_until_both_are_released() -> None:
    quarantine, first, second = QuarantineList(), uuid.uuid4(), uuid.uuid4()
    quarantine.apply(change(first, "100.64.0.5", "quarantined"))
    assert not quarantine.apply(change(second, "100.64.0.5", "garden_applied"))
    assert quarantine.apply(change(first, "100.64.0.6", "quarantined"))
    assert "100.64.0.5" in quarantine  # still the second case's
    assert quarantine.apply(change(first, "100.64.0.6", "release_requested"))
    assert "100.64.0.5" in quarantine
    assert quarantine.apply(change(second, "100.64.0.5", "released"))
    assert len(quarantine) == 0


def test_other_categories_and_unknown_cases_are_ignored() -> None:
    quarantine = QuarantineList()
    assert not quarantine.apply(change(uuid.uuid4(), "100.64.0.5", "quarantined", "scan"))
    assert not quarantine.apply(change(uuid.uuid4(), "100.64.0.5", "quarantined", None))
    assert not quarantine.apply(change(uuid.uuid4(), "100.64.0.5", "released"))
    assert len(quarantine) == 0


def test_the_snapshot_keeps_cases_and_reads_the_older_address_keyed_form() -> None:
    quarantine, case = QuarantineList(), uuid.uuid4()
    quarantine.apply(change(case, "100.64.0.5", "quarantined"))
    restored = QuarantineList()
    restored.load(_quarantined_cases({"quarantined_cases": quarantine.as_dict()}))
    assert "100.64.0.5" in restored
    older = QuarantineList()
    older.load(_quarantined_cases({"quarantined": {"100.64.0.5": str(case)}}))
    # A case restored from the older form can still move and be released
    older.apply(change(case, "100.64.0.9", "quarantined"))
    assert "100.64.0.5" not in older
    older.apply(change(case, "100.64.0.9", "released"))
    assert len(older) == 0


def test_a_change_delivered_after_a_newer_one_of_its_case_is_ignored() -> None:
    quarantine, case = QuarantineList(), uuid.uuid4()
    start = datetime.now(UTC)
    quarantined, moved, released = (start + timedelta(seconds=s) for s in (0, 10, 20))
    # Given a case released after a move
    quarantine.apply(change(case, "100.64.0.5", "quarantined", at=quarantined))
    quarantine.apply(change(case, "100.64.0.9", "quarantined", at=moved))
    assert quarantine.apply(change(case, "100.64.0.9", "released", at=released))
    # When its older changes come again (a redelivery, a retry)
    assert not quarantine.apply(change(case, "100.64.0.9", "quarantined", at=moved))
    assert not quarantine.apply(change(case, "100.64.0.5", "garden_applied", at=quarantined))
    # Then the address stays released
    assert len(quarantine) == 0
    # Also when the release came first, and across a save and load of the list
    other, restored = uuid.uuid4(), QuarantineList()
    quarantine.apply(change(other, "100.64.0.7", "released", at=released))
    restored.load_document(quarantine.document())
    assert not restored.apply(change(other, "100.64.0.7", "quarantined", at=quarantined))
    assert not restored.apply(change(case, "100.64.0.9", "quarantined", at=moved))
    assert len(restored) == 0


def test_the_list_document_changes_with_each_change_applied_and_keeps_released_cases_a_while() -> None:
    quarantine, case = QuarantineList(), uuid.uuid4()
    revision = quarantine.revision
    quarantine.apply(change(case, "100.64.0.5", "quarantined"))
    assert quarantine.revision > revision
    # A case of a category the list ignores leaves the document as it was
    revision = quarantine.revision
    quarantine.apply(change(uuid.uuid4(), "100.64.0.6", "quarantined", "scan"))
    quarantine.apply(change(uuid.uuid4(), "100.64.0.6", "released", "scan"))
    assert quarantine.revision == revision
    # A release older than the memory of released cases is forgotten at the next release
    long_ago = datetime.now(UTC) - timedelta(days=30)
    quarantine.apply(change(case, "100.64.0.5", "released", at=datetime.now(UTC)))
    forgotten = uuid.uuid4()
    quarantine.apply(change(forgotten, "100.64.0.8", "released", at=long_ago))
    assert set(quarantine.document()["changed_at"]) == {str(case)}
