"""Root pytest configuration: the shared real-peer fixtures of lazaretto_core."""

pytest_plugins = ["lazaretto_core.testing"]
