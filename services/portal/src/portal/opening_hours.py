"""The helpdesk's opening hours, written once by the operator and shown in the visitor's language.

`LAZARETTO_HELPDESK_HOURS` is either a schedule, `Mon-Fri 08:00-20:00; Sat 09:00-13:00` (days Mon..Sun,
a range or a comma list, then one or more `HH:MM-HH:MM` spans), which every page renders with the
language's own day names and clock (Spanish: lunes to viernes, 8:00 to 20:00, joined by en dashes), or
any other text, shown as written in every language (the operator's words, theirs to translate).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import time

from babel import Locale
from babel.dates import format_time

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # babel's index: 0 = Monday
DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
EN_DASH = "\u2013"  # ranges of days and times, as typographers write them
_SPAN = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])-([01][0-9]|2[0-4]):([0-5][0-9])$")


@dataclass(frozen=True)
class Opening:
    days: tuple[int, ...]  # ascending, 0 = Monday
    spans: tuple[tuple[time, time], ...]


def _day(name: str) -> int | None:
    """Monday is 0; `mon` and `monday` (any case) both name it."""
    key = name.strip().lower()
    return next((index for index, day in enumerate(DAYS) if key in (day, DAY_NAMES[index])), None)


def _days(text: str) -> tuple[int, ...] | None:
    chosen: set[int] = set()
    for part in text.split(","):
        first, dash, last = part.partition("-")
        start, end = _day(first), _day(last) if dash else _day(first)
        if start is None or end is None or end < start:
            return None
        chosen.update(range(start, end + 1))
    return tuple(sorted(chosen))


def _spans(text: str) -> tuple[tuple[time, time], ...] | None:
    spans = []
    for part in text.split(","):
        match = _SPAN.match(part.strip())
        if match is None:
            return None
        h1, m1, h2, m2 = (int(group) for group in match.groups())
        if (h2, m2) > (24, 0) or (h2, m2) <= (h1, m1):
            return None
        spans.append((time(h1, m1), time(23, 59) if h2 == 24 else time(h2, m2)))
    return tuple(spans)


def parse_schedule(text: str) -> tuple[Opening, ...] | None:
    """The schedule `text` describes, or None when it is free text (shown as written)."""
    openings = []
    for entry in text.split(";"):
        days_text, _, spans_text = entry.strip().partition(" ")
        days, spans = _days(days_text), _spans(spans_text.replace(" ", ""))
        if not days or not spans:
            return None
        openings.append(Opening(days, spans))
    return tuple(openings) or None


def _day_range(days: tuple[int, ...], names: dict[int, str]) -> str:
    runs: list[list[int]] = []
    for day in days:
        if runs and day == runs[-1][-1] + 1:
            runs[-1].append(day)
        else:
            runs.append([day])
    return ", ".join(
        names[run[0]] if len(run) == 1 else f"{names[run[0]]}{EN_DASH}{names[run[-1]]}" for run in runs
    )


def render_hours(text: str, language_tag: str, every_day: str) -> str:
    """`text` in the language `language_tag`; `every_day` is that language's words for all seven days."""
    schedule = parse_schedule(text)
    if schedule is None:
        return text
    locale = Locale.parse(language_tag)
    names = dict(locale.days["format"]["wide"].items())
    parts = []
    for opening in schedule:
        days = every_day if opening.days == tuple(range(7)) else _day_range(opening.days, names)
        spans = ", ".join(
            f"{format_time(start, 'short', locale=locale)}{EN_DASH}{format_time(end, 'short', locale=locale)}"
            for start, end in opening.spans
        )
        parts.append(f"{days} {spans}")
    return "; ".join(parts)
