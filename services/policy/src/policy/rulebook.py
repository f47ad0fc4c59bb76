"""The rule set in force: loaded from YAML (the packaged defaults, or the operator's file), validated,
versioned by name and content hash, and reloaded without a restart (SIGHUP, or the file changing).

A file that does not load at start stops the service with the reason; one that does not load on a
reload is logged and counted, and the rules in force stay.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml
from prometheus_client import Counter
from pydantic import ValidationError

from .rules import RuleSet

log = logging.getLogger(__name__)

RELOADS = Counter(
    "lazaretto_policy_rules_reloads_total", "Rule set reloads, by outcome (loaded, failed)", ["outcome"]
)


class RulesError(ValueError):
    """The rule file cannot be used; the message names the file and every problem."""


@dataclass(frozen=True)
class LoadedRules:
    rules: RuleSet
    # `<name>@<first 12 hex of sha256 of the file>`: recorded with every decision.
    version: str
    source: str


def parse(text: bytes, source: str) -> LoadedRules:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RulesError(f"{source}: not YAML: {exc}") from None
    try:
        rules = RuleSet.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}" for e in exc.errors()[:10]
        )
        raise RulesError(f"{source}: invalid rule set: {problems}") from None
    version = f"{rules.name}@{hashlib.sha256(text).hexdigest()[:12]}"
    return LoadedRules(rules, version, source)


def load(path: Path | None) -> LoadedRules:
    """The operator's file, or the packaged defaults when `path` is None."""
    if path is None:
        text = resources.files("policy").joinpath("default_rules.yaml").read_bytes()
        return parse(text, "default_rules.yaml (packaged)")
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise RulesError(f"{path}: cannot read the rule file: {exc.strerror or exc}") from None
    return parse(text, str(path))


class RuleBook:
    """The rules in force, swapped atomically on a successful reload."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.current = load(path)
        self._stamp = self._file_stamp()

    @property
    def version(self) -> str:
        return self.current.version

    def _file_stamp(self) -> tuple[float, int] | None:
        if self.path is None:
            return None
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return (stat.st_mtime, stat.st_size)

    def reload(self) -> bool:
        """Load the file again; True when a new version is now in force."""
        self._stamp = self._file_stamp()
        try:
            loaded = load(self.path)
        except RulesError as exc:
            RELOADS.labels("failed").inc()
            log.error("rules not reloaded, keeping %s: %s", self.current.version, exc)
            return False
        RELOADS.labels("loaded").inc()
        if loaded.version == self.current.version:
            return False
        log.info("rules reloaded: %s -> %s", self.current.version, loaded.version)
        self.current = loaded
        return True

    async def reload_if_changed(self) -> None:
        """A supervised loop's turn: reload when the file's time or size changed."""
        if self.path is not None and self._file_stamp() != self._stamp:
            self.reload()
