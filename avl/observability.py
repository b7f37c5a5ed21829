"""The Prometheus endpoint every service process shares (one per process, whatever it runs)."""

from __future__ import annotations

import logging

from avl.config import ConfigError, Settings

log = logging.getLogger("avl")
_started: tuple[str, int] | None = None


def serve_metrics(settings: Settings) -> None:
    """Serves this process's metrics on AVL_METRICS_HOST:AVL_METRICS_PORT (0: off); idempotent."""
    global _started
    if not settings.metrics_port or _started is not None:
        return
    from prometheus_client import start_http_server

    try:
        start_http_server(settings.metrics_port, addr=settings.metrics_host)
    except OSError as exc:
        raise ConfigError(f"AVL_METRICS_PORT: cannot listen on {settings.metrics_host}:{settings.metrics_port}"
                          f" ({exc.strerror})") from None
    _started = (settings.metrics_host, settings.metrics_port)
    log.info("metrics on http://%s:%s/metrics", settings.metrics_host, settings.metrics_port)
