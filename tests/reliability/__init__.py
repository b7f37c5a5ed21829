"""Fault tests of the ingest path: the ingest process, the database, the broker and the
spool's disk failing under a live simulated fleet; load; hostile connections; identity.
Each test prints its figures (``pytest -s``)."""
