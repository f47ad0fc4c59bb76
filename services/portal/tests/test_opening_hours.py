"""The helpdesk's schedule: parsed from the operator's one line, rendered with each language's own words."""

from __future__ import annotations

from datetime import time

import pytest

from portal.opening_hours import Opening, parse_schedule, render_hours


def test_a_schedule_is_days_and_spans() -> None:
    assert parse_schedule("Mon-Fri 08:00-20:00; Sat 09:00-13:00") == (
        Opening((0, 1, 2, 3, 4), ((time(8), time(20)),)),
        Opening((5,), ((time(9), time(13)),)),
    )
    assert parse_schedule("monday,wednesday 09:00-12:00, 14:00-18:00") == (
        Opening((0, 2), ((time(9), time(12)), (time(14), time(18)))),
    )


@pytest.mark.parametrize(
    "text",
    [
        "Every day, 8:00 to 22:00",  # free text
        "Fri-Mon 08:00-09:00",  # a range that wraps
        "Mon-Fri 20:00-08:00",  # a span that ends before it starts
        "Mon-Fri 8-20",
        "Funday 08:00-20:00",
        "",
    ],
)
def test_anything_else_is_free_text_shown_as_written(text: str) -> None:
    assert parse_schedule(text) is None
    assert render_hours(text, "es", "todos los días") == text


def test_each_language_names_its_days_and_writes_its_clock() -> None:
    # CLDR puts a narrow no-break space (U+202F) before AM/PM in English
    schedule = "Mon-Fri 08:00-20:00; Sat 09:00-13:00"
    assert (
        render_hours(schedule, "es", "todos los días")
        == "lunes\u2013viernes 8:00\u201320:00; sábado 9:00\u201313:00"
    )
    assert render_hours(schedule, "en", "Every day") == (
        "Monday\u2013Friday 8:00\u202fAM\u20138:00\u202fPM; Saturday 9:00\u202fAM\u20131:00\u202fPM"
    )
    assert render_hours("Mon-Sun 09:00-21:00", "es", "todos los días") == "todos los días 9:00\u201321:00"
    assert (
        render_hours("Mon,Wed-Thu 09:00-12:00", "en", "Every day")
        == "Monday, Wednesday\u2013Thursday 9:00\u202fAM\u201312:00\u202fPM"
    )
