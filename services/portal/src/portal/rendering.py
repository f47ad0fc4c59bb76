"""Turning a page and its facts into HTML in the visitor's language: templates (the operator's first),
gettext catalogues, dates in the service area's zone (else UTC, said so), the ISP's identity."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import jinja2
from babel.dates import format_datetime
from fastapi.responses import HTMLResponse

from .i18n import Catalogues, Language
from .opening_hours import render_hours
from .settings import PortalSettings

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self';"
        " frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Vary": "Accept-Language, Cookie",
}


@dataclass(frozen=True)
class Helpdesk:
    phone: str
    hours: str
    email: str

    @property
    def tel(self) -> str:
        """RFC 3966 `tel:` URI: the digits, with the leading + of an international number."""
        return "tel:" + ("+" if self.phone.startswith("+") else "") + re.sub(r"[^0-9]", "", self.phone)


class Renderer:
    def __init__(self, settings: PortalSettings, catalogues: Catalogues) -> None:
        self.settings = settings
        self.catalogues = catalogues
        self.zone = ZoneInfo(settings.time_zone) if settings.time_zone else UTC
        self.zone_label = settings.time_zone or "UTC"
        # The hours in each language: a schedule gets the language's day names and clock.
        self.helpdesks = {
            language.tag: Helpdesk(
                settings.helpdesk_phone,
                render_hours(
                    settings.helpdesk_hours,
                    language.tag,
                    catalogues.translations(language.tag).gettext("Every day"),
                ),
                settings.helpdesk_email,
            )
            for language in catalogues.languages
        }
        loaders: list[jinja2.BaseLoader] = []
        if settings.templates_dir is not None:
            if not settings.templates_dir.is_dir():
                raise ValueError(f"LAZARETTO_TEMPLATES_DIR {settings.templates_dir} is not a directory")
            loaders.append(jinja2.FileSystemLoader(settings.templates_dir))
        loaders.append(jinja2.PackageLoader("portal", "templates"))
        self._envs: dict[str, jinja2.Environment] = {}
        for language in catalogues.languages:
            env = jinja2.Environment(
                loader=jinja2.ChoiceLoader(loaders),
                autoescape=True,
                undefined=jinja2.StrictUndefined,
                extensions=["jinja2.ext.i18n"],
            )
            env.install_gettext_translations(catalogues.translations(language.tag), newstyle=True)  # type: ignore[attr-defined]
            env.filters["when"] = self._formatter(language.tag)
            self._envs[language.tag] = env

    def _formatter(self, tag: str) -> Any:
        def when(moment: datetime | str | None) -> str:
            if moment is None:
                return ""
            if isinstance(moment, str):
                try:
                    moment = datetime.fromisoformat(moment)
                except ValueError:
                    return str(moment)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            text = format_datetime(moment, "medium", tzinfo=self.zone, locale=tag)
            return f"{text} ({self.zone_label})"

        return when

    def render(
        self,
        template: str | list[str | jinja2.Template],
        language: Language,
        *,
        status: int = 200,
        path: str = "/",
        query: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        **context: Any,
    ) -> HTMLResponse:
        env = self._envs[language.tag]
        page = env.get_or_select_template(template).render(
            isp_name=self.settings.isp_name,
            has_logo=self.settings.isp_logo is not None,
            helpdesk=self.helpdesks[language.tag],
            appeal_reply_days=self.settings.appeal_reply_days,
            lang=language,
            switch=[
                (other, f"{path}?{urlencode({**(query or {}), 'lang': other.tag})}")
                for other in self.catalogues.languages
                if other != language
            ],
            **context,
        )
        return HTMLResponse(
            page,
            status_code=status,
            headers={**SECURITY_HEADERS, "Content-Language": language.html, **(headers or {})},
        )
