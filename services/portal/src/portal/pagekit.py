"""What every page needs, shared by the pages and the HTML error pages: the catalogues, the renderer,
and the visitor's language (form, `?lang=`, cookie, Accept-Language, then the default)."""

from __future__ import annotations

from typing import Any

import jinja2
from fastapi import Request
from fastapi.responses import Response

from .captive import ORIGINAL_URL_PARAM, original_url
from .i18n import Catalogues, Language
from .rendering import Renderer
from .settings import PortalSettings

LANGUAGE_COOKIE = "lz_lang"


class PageKit:
    def __init__(self, settings: PortalSettings) -> None:
        self.settings = settings
        self.catalogues = Catalogues(settings.locales_dir)
        if settings.default_language not in self.catalogues.tags():
            raise ValueError(f"LAZARETTO_DEFAULT_LANGUAGE {settings.default_language!r} has no catalogue")
        self.renderer = Renderer(settings, self.catalogues)
        self._by_tag = {language.tag: language for language in self.catalogues.languages}

    def language_of(self, request: Request, form_lang: str = "") -> Language:
        tag = self.catalogues.negotiate(
            form_lang or request.query_params.get("lang"),
            request.cookies.get(LANGUAGE_COOKIE),
            request.headers.get("accept-language"),
            self.settings.default_language,
        )
        return self._by_tag[tag]

    def render(
        self,
        request: Request,
        template: str | list[str | jinja2.Template],
        language: Language,
        **context: Any,
    ) -> Response:
        query = {k: v for k, v in request.query_params.items() if k in ("case", "since", ORIGINAL_URL_PARAM)}
        path = request.url.path if request.method in ("GET", "HEAD") else "/"
        # Where the visitor was going when the catch-all brought them here: shown, never followed.
        context.setdefault("came_from", original_url(request))
        response = self.renderer.render(template, language, path=path, query=query, **context)
        if request.query_params.get("lang") == language.tag:
            response.set_cookie(LANGUAGE_COOKIE, language.tag, max_age=365 * 86400, samesite="lax")
        return response

    def unavailable(self, request: Request, language: Language | None = None) -> Response:
        """What a visitor sees while policy cannot be asked (the probes said "captive" to bring them here)."""
        language = language or self.language_of(request)
        return self.render(request, "unavailable.html", language, status=503, headers={"Retry-After": "30"})

    def error(
        self,
        request: Request,
        language: Language | None,
        status: int,
        problem: str,
        headers: dict[str, str] | None = None,
    ) -> Response:
        language = language or self.language_of(request)
        return self.render(
            request, "error.html", language, status=status, problem=problem, headers=headers or {}
        )
