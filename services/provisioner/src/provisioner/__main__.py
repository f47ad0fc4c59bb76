"""`python -m provisioner`: start the provisioner."""

from lazaretto_core.service import main

from .app import build
from .settings import ProvisionerSettings

if __name__ == "__main__":
    main(ProvisionerSettings, build)
