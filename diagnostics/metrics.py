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
# The support desk's deadlines, counted from the database by every worker (the same figures on each).
TICKETS_INFORM_DUE = Gauge("avl_tickets_inform_due", "Open tickets whose customer is not told yet, within the 24 h",
                           ["queue"])
TICKETS_INFORM_OVERDUE = Gauge("avl_tickets_inform_overdue",
                               "Open tickets past the 24 h rule without the customer told what is happening", ["queue"])
TICKETS_BRING_IN_OVERDUE = Gauge("avl_tickets_bring_in_overdue",
                                 "Field-service tickets whose vehicle was not brought in by the 7-day deadline")
TICKET_REMINDERS = Counter("avl_ticket_reminders_total", "Bring-in reminders queued (one per ticket)", ["sent"])
