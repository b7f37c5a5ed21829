"""Ingest: device transports, protocol decoders, the pipeline and the durable batch writer."""
