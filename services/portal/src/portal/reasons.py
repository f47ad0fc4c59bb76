"""Which page a category gets, and which remediation links fit it. Pure.

The words live in the templates (`category/<name>.html`, operator-overridable, translated through
gettext); this module only says which template and which kinds of allow-listed links go with a category.
A copyright notice needs no antivirus links; a page for an unknown category is the generic one.
"""

from __future__ import annotations

from dataclasses import dataclass

from lazaretto_core.remediation import Purpose


@dataclass(frozen=True)
class CategoryPage:
    template: str
    link_purposes: tuple[Purpose, ...]


_CLEAN_UP: tuple[Purpose, ...] = ("antivirus", "os_update", "isp")

PAGES: dict[str, CategoryPage] = {
    "scan": CategoryPage("category/scan.html", _CLEAN_UP),
    "malware": CategoryPage("category/malware.html", _CLEAN_UP),
    "spam": CategoryPage("category/spam.html", _CLEAN_UP),
    "dos": CategoryPage("category/dos.html", _CLEAN_UP),
    "bruteforce": CategoryPage("category/bruteforce.html", _CLEAN_UP),
    "copyright": CategoryPage("category/copyright.html", ("isp",)),
    "other": CategoryPage("category/other.html", _CLEAN_UP),
}


def page_for(category: str) -> CategoryPage:
    return PAGES.get(category, PAGES["other"])
