"""The HTTP API (FastAPI) for fleet clients, the support center, installation centers and admins."""
