"""Web layer: HTTP API and downloads."""
