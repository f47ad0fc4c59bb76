"""The page's languages: gettext catalogues read from `.po` files at start-up, and the visitor's choice.

English is the source language. Every other language is a `<lang>/LC_MESSAGES/messages.po` under the
package's `locales/` or the operator's `LAZARETTO_LOCALES_DIR` (searched first: an operator's entry wins
over ours, and a new folder adds a language). The `.po` files are compiled in memory when the portal
starts, so a clean checkout needs no build step.
"""

from __future__ import annotations

import importlib.resources
import io
import re
from dataclasses import dataclass
from pathlib import Path

from babel import Locale, UnknownLocaleError
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import NullTranslations, Translations

SOURCE_LANGUAGE = "en"
_TAG = re.compile(r"^[a-z]{2,3}(?:_[A-Z]{2})?$")


def package_locales() -> Path:
    return Path(str(importlib.resources.files("portal").joinpath("locales")))


def _compiled(po_file: Path) -> Translations:
    with po_file.open("rb") as source:
        catalog = read_po(source)
    buffer = io.BytesIO()
    write_mo(buffer, catalog)
    buffer.seek(0)
    return Translations(fp=buffer)


def _catalogues(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    return {
        entry.name: entry / "LC_MESSAGES" / "messages.po"
        for entry in sorted(folder.iterdir())
        if _TAG.match(entry.name) and (entry / "LC_MESSAGES" / "messages.po").is_file()
    }


@dataclass(frozen=True)
class Language:
    tag: str  # `es`, `pt_BR`: as the folder names it
    name: str  # in the language itself, for the switch: `español`

    @property
    def html(self) -> str:
        """The BCP 47 tag for `lang=` attributes: `pt-BR`."""
        return self.tag.replace("_", "-")


class Catalogues:
    """Every language the portal speaks, with its translations; English always."""

    def __init__(self, operator_dir: Path | None = None) -> None:
        self._translations: dict[str, NullTranslations] = {SOURCE_LANGUAGE: NullTranslations()}
        ours = _catalogues(package_locales())
        theirs = _catalogues(operator_dir) if operator_dir is not None else {}
        for tag in sorted(set(ours) | set(theirs)):
            try:
                Locale.parse(tag)
            except (UnknownLocaleError, ValueError):
                raise ValueError(f"locales: {tag!r} is not a language babel knows") from None
            merged = _compiled(ours[tag]) if tag in ours else None
            if tag in theirs:
                operator = _compiled(theirs[tag])
                merged = operator if merged is None else merged.merge(operator)
            assert merged is not None
            self._translations[tag] = merged
        self.languages: tuple[Language, ...] = tuple(
            Language(tag, Locale.parse(tag).get_display_name(tag) or tag) for tag in self._translations
        )

    def tags(self) -> tuple[str, ...]:
        return tuple(self._translations)

    def translations(self, tag: str) -> NullTranslations:
        return self._translations[tag]

    def negotiate(
        self, asked: str | None, cookie: str | None, accept_language: str | None, default: str
    ) -> str:
        """The `?lang=` switch, else the remembered choice, else Accept-Language, else the default."""
        for explicit in (asked, cookie):
            if explicit and explicit.replace("-", "_") in self._translations:
                return explicit.replace("-", "_")
        for wanted in accepted_languages(accept_language or ""):
            match = self._match(wanted)
            if match is not None:
                return match
        return default if default in self._translations else SOURCE_LANGUAGE

    def _match(self, wanted: str) -> str | None:
        language, _, region = wanted.replace("_", "-").partition("-")
        exact = f"{language.lower()}_{region.upper()}" if region else language.lower()
        if exact in self._translations:
            return exact
        if language.lower() in self._translations:
            return language.lower()
        # `pt` asked, only `pt_BR` offered: the regional variant is better than another language
        return next((tag for tag in self._translations if tag.split("_")[0] == language.lower()), None)


def accepted_languages(header: str) -> list[str]:
    """RFC 9110 Accept-Language in preference order; `*`, q=0 and malformed entries dropped."""
    ranked: list[tuple[float, int, str]] = []
    for position, item in enumerate(header.split(",")[:20]):
        tag, _, params = item.strip().partition(";")
        tag = tag.strip()
        if not re.fullmatch(r"[A-Za-z]{1,8}(?:-[A-Za-z0-9]{1,8})*", tag):
            continue
        quality = 1.0
        match = re.search(r"q=([0-9.]+)", params)
        if match:
            try:
                quality = float(match.group(1))
            except ValueError:
                continue
        if quality > 0:
            ranked.append((-quality, position, tag))
    return [tag for _, _, tag in sorted(ranked)]
