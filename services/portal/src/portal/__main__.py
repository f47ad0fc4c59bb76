"""`python -m portal`: start the walled-garden portal."""

from lazaretto_core.service import main

from .app import build
from .settings import PortalSettings

if __name__ == "__main__":
    main(PortalSettings, build)
