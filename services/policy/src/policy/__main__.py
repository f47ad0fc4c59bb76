"""`python -m policy`: start the policy service."""

from lazaretto_core.service import main

from .app import build
from .settings import PolicySettings

if __name__ == "__main__":
    main(PolicySettings, build)
