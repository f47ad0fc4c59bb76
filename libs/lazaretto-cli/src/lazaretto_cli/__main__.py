"""`python -m lazaretto_cli`: the same as the `lazaretto` command."""

from __future__ import annotations

from .app import main

main()
