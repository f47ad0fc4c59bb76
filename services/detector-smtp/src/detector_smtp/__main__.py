"""`python -m detector_smtp`: start the SMTP detector (a Postfix policy server)."""

from lazaretto_core.service import main

from .app import build
from .settings import DetectorSmtpSettings

if __name__ == "__main__":
    main(DetectorSmtpSettings, build)
