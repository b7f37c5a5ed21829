"""The demo fleet: one corporate account in Caracas with a vehicle per simulated protocol."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import psycopg

from avl.admin import DeviceSpec, add_account, add_center, add_device, create_token

ACCOUNT = "Demo Logistics"
CENTERS = [
    ("Centro de Instalación Chacao", 10.4961, -66.8530),
    ("Centro de Instalación Los Ruices", 10.4903, -66.8283),
]
# (protocol, identifier, msisdn, plate, supply voltage, kind)
DEVICES = [
    ("teltonika", "356307042441013", "584140000001", "AB123CD", 12, "van"),
    ("teltonika", "356307042441014", "584140000002", "AB124CD", 24, "truck"),
    ("gt06", "868120201234561", "584140000003", "AC200XY", 12, "car"),
    ("gt06", "868120201234562", "584140000004", "AC201XY", 12, "car"),
    ("gl200", "862170010000001", "584140000005", "AD300QR", 12, "van"),
    ("gl200", "862170010000002", "584140000006", "AD301QR", 24, "bus"),
    ("calamp", "4634040001", "584140000007", "AE400LM", 12, "car"),
    ("h02", "4209170001", "584140000008", "AF500NP", 12, "motorcycle"),
    ("osmand", "demo-phone-1", "584140000009", "AG600ST", 12, "car"),
    ("gt06", "868120201234563", "584140000010", "AC202XY", 12, "van"),
]


def provision(conn: psycopg.Connection) -> dict[str, Any]:
    """Creates the demo account, centers and devices when missing; new tokens every call."""
    row = conn.execute("SELECT id FROM accounts WHERE name = %s", (ACCOUNT,)).fetchone()
    if row is None:
        add_account(conn, ACCOUNT, contact_name="Flota Demo", contact_msisdn="584120000000",
                    contact_email="flota@demo.example")
        centers = [add_center(conn, name, lat, lon) for name, lat, lon in CENTERS]
        installed = date.today() - timedelta(days=60)
        for protocol, ident, msisdn, plate, volts, kind in DEVICES:
            add_device(conn, DeviceSpec(identifier=ident, protocol=protocol, account=ACCOUNT, msisdn=msisdn,
                                        plate=plate, supply_voltage_v=volts, vehicle_kind=kind,
                                        report_interval_s=30, center=centers[0]["id"], installed_at=installed))
    tokens = {}
    for role, name, extra in (
        ("client", "Demo dispatcher", {"account": ACCOUNT}),
        ("support", "Demo support agent", {}),
        ("installer", "Demo installer", {"center": CENTERS[0][0]}),
        ("admin", "Demo admin", {}),
    ):
        _, tokens[role] = create_token(conn, role, name=name, **extra)
    count = conn.execute("SELECT count(*) FROM devices d JOIN accounts a ON a.id = d.account_id WHERE a.name = %s",
                         (ACCOUNT,)).fetchone()
    return {"account": ACCOUNT, "devices": count[0] if count else 0, "tokens": tokens}
