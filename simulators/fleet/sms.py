"""What a terminal answers to an SMS, in its family's command syntax.

``answer(family, text, status)`` is pure: ``status`` is the terminal's current view of itself
(last fix, ignition, voltages, faults). The terminal's ``on_sms`` adds the fault behaviour
(powered off or SIM suspended: nothing is received; data channel down: answered, because
SMS rides on the signalling channel, not on data).

Families and the commands they answer (case-insensitive):

* teltonika (FMB, SMS ``<login> <password> <command>``, empty credentials allowed):
  ``getgps``, ``getstatus``, ``getinfo``, ``getver``
* gt06 (Concox): ``WHERE#``, ``STATUS#``, ``PARAM#``, ``URL#``
* calamp (LMU): ``!R0`` (text status), ``!R5`` / ``!RG`` (GPS status report: the position)
* gl200 (Queclink): ``AT+GTRTO=<pwd>,1,...$`` (position, answered ``+RESP:GTRTL``), ``AT+GTRTO=<pwd>,0,...$`` (GPS info)
* h02 (Sinotrack): ``WHERE``, ``G123456#``, ``RCONF``, ``CHECK``
* osmand / json (phones, gateways): ``WHERE``, ``STATUS``
Every family also answers the generic position requests ``WHERE``, ``POS``, ``LOC``.
Unknown commands get the family's error reply.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(slots=True)
class TerminalStatus:
    identifier: str
    fix_time: datetime
    latitude: float
    longitude: float
    speed_kmh: float
    course: float
    altitude_m: float
    satellites: int
    valid: bool
    ignition: bool
    power_mv: int
    battery_mv: int
    data_link: bool  # connected to the server right now
    antenna_fault: bool = False


GENERIC_POSITION = ("WHERE", "POS", "LOC", "POSITION")


def _maps(s: TerminalStatus) -> str:
    return f"http://maps.google.com/maps?q={s.latitude:.6f},{s.longitude:.6f}"


def _teltonika(cmd: str, s: TerminalStatus) -> str:
    # Strip "<login> <password> " (possibly empty credentials: the text then starts with spaces).
    words = cmd.split()
    command = words[-1].lower() if words else ""
    if command in ("getgps", "where", "pos", "loc", "position"):
        return (f"GPS:{int(s.valid)} Sat:{s.satellites if s.valid else 0} Lat:{s.latitude:.5f} Long:{s.longitude:.5f} "
                f"Alt:{s.altitude_m:.0f} Speed:{s.speed_kmh:.0f} Dir:{s.course:.0f} "
                f"Date: {s.fix_time:%Y/%m/%d} Time: {s.fix_time:%H:%M:%S}")
    if command == "getstatus":
        return (f"Data Link: {int(s.data_link)} GPRS: {int(s.data_link)} Phone: 0 SIM: 0 OP: 73402 Signal: 4 "
                "NewSMS: 0 Roaming: 0 SMSFull: 0 LAC: 1041 Cell ID: 30551 NetType: 1 FwUpd:-2")
    if command == "getinfo":
        return (f"RTC:{s.fix_time:%Y/%m/%d %H:%M} Init:{s.fix_time:%Y/%m/%d %H:%M} UpTime:3600s PWR:PwrVoltage "
                f"RST:0 GPS:{1 if s.valid else (2 if s.antenna_fault else 0)} SAT:{s.satellites} TTFF:25 TTLF:0 "
                f"NOGPS:0:0 SR:0 FG:0 FL:0 SMS:0 REC:0 MD:{int(s.speed_kmh > 0)} DB:0 "
                f"ExtV:{s.power_mv} BatV:{s.battery_mv}")
    if command == "getver":
        return f"Code Ver:03.27.07 Device IMEI:{s.identifier} Device ID:000000 Modem App Ver:TM25Q_R_01.00.04"
    return "Unknown command"


def _gt06(cmd: str, s: TerminalStatus) -> str:
    command = cmd.strip().upper().rstrip("#")
    if command in GENERIC_POSITION:
        ns, ew = ("N" if s.latitude >= 0 else "S"), ("E" if s.longitude >= 0 else "W")
        if not s.valid:
            return "GPS not fixed, last position:" + _maps(s)
        return (f"Lat:{ns}{abs(s.latitude):.6f},Lon:{ew}{abs(s.longitude):.6f},Course:{s.course:.2f},"
                f"Speed:{s.speed_kmh:.2f}km/h,DateTime:{s.fix_time:%Y-%m-%d %H:%M:%S}")
    if command == "STATUS":
        gps = "Successful positioning" if s.valid else ("Antenna open" if s.antenna_fault else "Searching satellite")
        battery = "100%" if s.power_mv > 0 else f"{max(0, min(100, (s.battery_mv - 3400) // 8))}%"
        return (f"Battery:{battery},GPRS:{'Link Up' if s.data_link else 'Link Down'},GSM Signal Level:Strong,"
                f"GPS:{gps},ACC:{'On' if s.ignition else 'Off'},Defense:Off")
    if command == "URL":
        return f"<Datetime:{s.fix_time:%y-%m-%d %H:%M:%S}>{_maps(s)}"
    if command == "PARAM":
        return f"IMEI:{s.identifier};TIMER:10,180;SENDS:5;SENSORSET:10,1,1,180;DEFENSE:10"
    return "Command error!"


def _calamp(cmd: str, s: TerminalStatus) -> str:
    command = cmd.strip().upper()
    if command.startswith("!R0"):
        fix = "3D" if s.valid else "None"
        return (f"ESN:{s.identifier} GPS:{fix} Sats:{s.satellites if s.valid else 0} Ign:{'On' if s.ignition else 'Off'} "
                f"Vin:{s.power_mv / 1000:.1f} Vbat:{s.battery_mv / 1000:.2f} Comm:{'Up' if s.data_link else 'Down'}")
    if command in ("!R5", "!RG") or command in GENERIC_POSITION:
        return (f"ESN:{s.identifier} {s.fix_time:%m/%d/%y %H:%M:%S} Lat:{s.latitude:.5f} Lon:{s.longitude:.5f} "
                f"Spd:{s.speed_kmh:.0f} Hdg:{s.course:.0f} Fix:{'Y' if s.valid else 'N'}")
    return f"ESN:{s.identifier} NAK"


def _gl200(cmd: str, s: TerminalStatus) -> str:
    command = cmd.strip().upper()
    when = f"{s.fix_time:%Y%m%d%H%M%S}"
    if command.startswith("AT+GTRTO="):
        fields = command[len("AT+GTRTO="):].rstrip("$").split(",")
        sub = fields[1] if len(fields) > 1 else ""
        if sub == "1" or sub == "":
            hdop = "1.0" if s.valid else "0"
            return (f"+RESP:GTRTL,060100,{s.identifier},,0,0,1,{hdop},{s.speed_kmh:.1f},{s.course:.0f},"
                    f"{s.altitude_m:.1f},{s.longitude:.6f},{s.latitude:.6f},{when},0734,0002,0000,0000,00,,,{when},FFFF$")
        if sub == "0":
            return f"+RESP:GTGPS,060100,{s.identifier},,{int(s.valid)},{s.satellites},{when},FFFF$"
        return f"+ACK:GTRTO,060100,{s.identifier},,{sub},{when},FFFF$"
    if command in GENERIC_POSITION:
        return _gl200("AT+GTRTO=gv300,1,,,,,,FFFF$", s)
    return f"+NACK:GTRTO,060100,{s.identifier}$"


def _h02(cmd: str, s: TerminalStatus) -> str:
    command = cmd.strip().upper().rstrip("#")
    if command in GENERIC_POSITION or command.startswith("G123456") or command == "URL":
        prefix = "" if s.valid else "Last: "
        return f"{prefix}{_maps(s)}&time={s.fix_time:%Y-%m-%dT%H:%M:%S}"
    if command in ("RCONF", "CHECK"):
        return (f"ID:{s.identifier} IP:server PORT:5013 GPRS:{'OK' if s.data_link else 'ERROR'} "
                f"GPS:{'OK' if s.valid else 'NO'} ACC:{'ON' if s.ignition else 'OFF'} "
                f"PWR:{s.power_mv / 1000:.1f}V")
    return "Command error"


def _phone(cmd: str, s: TerminalStatus) -> str:
    command = cmd.strip().upper().rstrip("#")
    if command in GENERIC_POSITION:
        return f"{_maps(s)} {s.fix_time:%Y-%m-%d %H:%M:%S}Z{'' if s.valid else ' (no fix)'}"
    if command == "STATUS":
        return f"id={s.identifier} link={'up' if s.data_link else 'down'} gps={'fix' if s.valid else 'nofix'}"
    return "unknown command"


_FAMILIES = {"teltonika": _teltonika, "gt06": _gt06, "calamp": _calamp, "gl200": _gl200, "h02": _h02,
             "osmand": _phone, "json": _phone}


def answer(family: str, text: str, status: TerminalStatus) -> str | None:
    """The reply a terminal of ``family`` sends to an SMS ``text`` (None: it sends none)."""
    handler = _FAMILIES.get(family)
    if handler is None:
        return None
    return handler(text, status)
