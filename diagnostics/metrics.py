"""Prometheus metrics of the diagnostics worker."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

VERDICTS = Counter("avl_diagnostic_verdicts_total", "Checklist verdicts", ["verdict"])
TICKETS_OPENED = Counter("avl_tickets_opened_total", "Tickets opened (not activities added)", ["category"])
SMS_SENT = Counter("avl_sms_sent_total", "SMS submitted to the SMSC", ["purpose"])
CHECKLIST_SECONDS = Histogram("avl_checklist_seconds", "Time to run one checklist",
                              buckets=(0.05, 0.1, 0.5, 1, 5, 15, 30, 60, 120, 300))
SWEEP_SECONDS = Histogram("avl_sweep_seconds", "Time to sweep the fleet", buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10))
SILENT_DEVICES = Gauge("avl_silent_devices", "Silent devices found by the last sweep")
SWEEPER = Gauge("avl_diagnostics_sweeper", "1 when this worker holds the sweeper lock")
