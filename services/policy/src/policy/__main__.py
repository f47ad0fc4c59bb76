"""`python -m policy`: start the policy service; `python -m policy audit-verify`: verify the audit."""

import sys

from lazaretto_core.service import main

from .app import build
from .settings import PolicySettings

if __name__ == "__main__":
    if sys.argv[1:] == ["audit-verify"]:
        from .audit_cli import main as audit_verify

        raise SystemExit(audit_verify())
    main(PolicySettings, build)
