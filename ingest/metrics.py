"""Prometheus metrics of the ingest service (scraped from AVL_METRICS_PORT)."""

from __future__ import annotations

from functools import cache

from prometheus_client import Counter, Gauge, Histogram

FRAMES = Counter("avl_frames_total", "Frames received from devices", ["protocol", "transport"])
POSITIONS = Counter("avl_positions_total", "Records routed by the pipeline", ["protocol", "destination"])
DECODE_ERRORS = Counter("avl_decode_errors_total", "Frames that could not be decoded", ["protocol"])
UNKNOWN_FRAMES = Counter("avl_unknown_device_frames_total", "Frames from unregistered devices (not acknowledged)",
                         ["protocol"])
REFUSED = Counter("avl_refused_frames_total", "Frames whose reports were not acknowledged", ["protocol", "reason"])
BATCH_ROWS = Histogram("avl_batch_rows", "Rows per committed batch", buckets=(1, 10, 50, 100, 500, 1000, 2500, 5000, 10000))
BATCH_SECONDS = Histogram("avl_batch_seconds", "Time to make one batch durable",
                          buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
QUEUE_ROWS = Gauge("avl_writer_queue_rows", "Rows waiting for the writer")
SPOOL_BYTES = Gauge("avl_spool_bytes", "Bytes in the spool waiting for the database")
DATABASE_UP = Gauge("avl_database_up", "1 when the writer's database connection works")
CONNECTIONS = Gauge("avl_open_connections", "Open device connections", ["protocol"])


# Labelled children, cached: ``labels()`` costs more than the increment on the hot path.
@cache
def frames(protocol: str, transport: str) -> Counter:
    return FRAMES.labels(protocol, transport)


@cache
def routed(protocol: str, destination: str) -> Counter:
    return POSITIONS.labels(protocol, destination)
