"""Fixtures: a private lab Postfix whose check_policy_service points at a port our tests serve."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lazaretto_lab.postfix import LabPostfix
from lazaretto_lab.process import free_port


@pytest.fixture(scope="module")
def postfix_lab() -> Iterator[LabPostfix]:
    """Postfix on 127.0.0.1:`.port`; serve policy on `.policy_port` (Postfix says DUNNO while none runs).
    Recipients at nosuchuser.example are refused after the policy check."""
    with LabPostfix(policy_port=free_port(), reject_domains=("nosuchuser.example",)) as mta:
        yield mta
