"""`python -m detector_snort`: start the IDS alert detector."""

from lazaretto_core.service import main

from .app import build
from .settings import DetectorSnortSettings

if __name__ == "__main__":
    main(DetectorSnortSettings, build)
