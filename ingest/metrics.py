"""Prometheus metrics of the ingest service (scraped from AVL_METRICS_PORT).

With several ingest processes (``ingest.processes``) each writes its values to files that the
supervisor serves together (prometheus_client's multiprocess mode): counters and histograms are
summed, and each gauge says how (``multiprocess_mode``; ignored in a single process)."""

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
POSITIONS_PATH = Counter("avl_writer_positions_total", "Positions written, by path: direct (could not conflict,"
                         " copied straight in) or staged (staging table, INSERT ... ON CONFLICT DO NOTHING)", ["path"])
QUEUE_ROWS = Gauge("avl_writer_queue_rows", "Rows waiting for the writer", multiprocess_mode="livesum")
SPOOL_BYTES = Gauge("avl_spool_bytes", "Bytes in the spool waiting for the database", multiprocess_mode="livesum")
DATABASE_UP = Gauge("avl_database_up", "1 when the writer's database connection works (of every ingest process)",
                    multiprocess_mode="livemin")
CONNECTIONS = Gauge("avl_open_connections", "Open device connections", ["protocol"], multiprocess_mode="livesum")
MQTT_CONNECTED = Gauge("avl_mqtt_connected", "1 while the MQTT input is subscribed (0: none or away)",
                       multiprocess_mode="livemax")
REFUSED_SOURCES = Counter("avl_refused_sources_total",
                          "Connections and datagrams refused: their source is not in the allowed networks",
                          ["protocol", "transport"])
QUARANTINED = Counter("avl_quarantined_total", "Reports kept in positions_quarantine, by reason", ["protocol", "reason"])
JUMP_REANCHORED = Counter("avl_jump_reanchored_total",
                          "Devices whose trusted fixes the jump check replaced with consecutive reports that agree"
                          " with each other but not with them", ["protocol"])
UDP_REPLIES_DROPPED = Counter("avl_udp_replies_dropped_total",
                              "UDP replies not sent because they were larger than the datagram they answer",
                              ["protocol"])
UNKNOWN_DROPPED = Counter("avl_unknown_sightings_dropped_total", "Unknown-device sightings not recorded",
                          ["protocol", "reason"])
UNKNOWN_RAW_CUT = Counter("avl_unknown_raw_truncated_total", "Unknown-device frames stored cut to their first bytes",
                          ["protocol"])
UNKNOWN_EXPIRED = Counter("avl_unknown_sightings_expired_total", "Unknown-device sightings deleted after retention")


# Labelled children, cached: ``labels()`` costs more than the increment on the hot path.
@cache
def frames(protocol: str, transport: str) -> Counter:
    return FRAMES.labels(protocol, transport)


@cache
def routed(protocol: str, destination: str) -> Counter:
    return POSITIONS.labels(protocol, destination)


@cache
def quarantined(protocol: str, reason: str) -> Counter:
    return QUARANTINED.labels(protocol, reason)


@cache
def positions_path(path: str) -> Counter:
    return POSITIONS_PATH.labels(path)
