"""`python -m cmts_agent`: start the CMTS agent."""

from lazaretto_core.service import main

from .app import build
from .settings import CmtsAgentSettings

if __name__ == "__main__":
    main(CmtsAgentSettings, build)
