"""The `lazaretto` command: operators' tool over the services' admin HTTP APIs (never their databases)."""
