"""The operator console: server-rendered pages on policy's admin port (`/console`)."""

from __future__ import annotations

from .pages import ROUTES, ConsoleDeps, install_console

__all__ = ["ROUTES", "ConsoleDeps", "install_console"]
