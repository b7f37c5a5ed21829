"""The SMS commands the platform sends a terminal, per protocol family: a status query (the
checklist's ping, the certification's SMS round trip) and a position query (the customer's
billable "locate now"). Queries only: never an output, configuration or reset command.

Each family's commands are the vendor's documented SMS syntax, with the device's SMS
password where the family needs one (``devices.options.sms_password``, else the family's
factory default). A family absent here takes no SMS commands (phones, gateways).

=========  ==============================  =================================  ===========  ==========================
family     status query                    position query                     password     documented in
=========  ==============================  =================================  ===========  ==========================
teltonika  ``<login> <pwd> getstatus``     ``<login> <pwd> getrecord``        empty        FMB SMS/GPRS command list
gt06       ``STATUS#``                     ``WHERE#``                         none         Concox GT06N / Jimi manuals
gl200      ``AT+GTRTO=<pwd>,1,,,,,,FFFF$`` the same (RTL: real-time location) ``gl200``    Queclink @Track protocol
calamp     ``!R0`` (text status)           ``!R5`` (GPS status report)        none         CalAmp LMU user's guide 11.2
h02        ``RCONF`` (read configuration)  ``RCONF``                          none         SinoTrack ST-90x manual
tk103      ``check<pwd>``                  ``smslink<pwd>``                   ``123456``   Coban TK103 manual
meitrack   ``<pwd>,A00``                   ``<pwd>,A00`` (real-time location) ``0000``     Meitrack SMS protocol
suntech    ``ST300CMD;<id>;02;StatusReq``  the same                           none         Suntech ST300 commands
enfora     ``AT$GPSRD=10``                 the same                           none         Enfora GSM/GPS AT commands
gps103     ``check<pwd>``                  the same (see below)               ``123456``   Coban TK103A/B manual, status
atrack     ``AT$INFO=?`` (unit info)       the same                           none         ATrack AT command set (AT/AP protocol documents)
ruptela    ``<pwd> version``               ``<pwd> coords`` (GPS state)       empty        Ruptela Pro3/Eco3/Tco3 SMS command list
galileo    ``Status``                      the same (Lat, Lon, Speed)         none         Galileosky GLONASS/GPS manual 10.6
=========  ==============================  =================================  ===========  ==========================

The H02 family has no documented SMS position query that we could confirm: ``RCONF`` is
read-only and its answer proves the terminal is alive; a position then comes over data.
The gps103 family (Coban's own ``imei:`` units) documents ``check<pwd>`` (power, battery, GPS,
GSM, ACC, door) but locates by a voice call, not an SMS we could confirm: its position query is
the status query too. JT808 (JT/T 808 defines no SMS commands; each maker has its own) and
Wialon IPS (a data protocol many brands speak) have no family command set: absent here.
ATrack's ``AT$INFO=?`` answers with the unit's ``$INFO=`` line (power, battery, satellites, RSSI):
proof of life, not a position. Cellocator is left out: its SMS channel carries Cellocator's own
binary-encoded command messages, and we found no documented plain-text status query.
T800x (Topflytech), JT600 (Jointech), Castel, Startek and Xirgo are left out: we could not confirm a
documented SMS status query for any of them. Topflytech's T8808 manual (10.16) documents only a
position query, ``GOOGLE,<PIN>#``, without the factory PIN; Castel's published SMS set configures
(server, APN, interval, fuel cut) but queries nothing; for the others we found no SMS command list.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class FamilyCommands:
    status: str
    position: str
    default_password: str | None = None


FAMILIES: dict[str, FamilyCommands] = {
    "teltonika": FamilyCommands("{login} {password} getstatus", "{login} {password} getrecord", ""),
    "gt06": FamilyCommands("STATUS#", "WHERE#"),
    "gl200": FamilyCommands("AT+GTRTO={password},1,,,,,,FFFF$", "AT+GTRTO={password},1,,,,,,FFFF$", "gl200"),
    "calamp": FamilyCommands("!R0", "!R5"),
    "h02": FamilyCommands("RCONF", "RCONF"),
    "tk103": FamilyCommands("check{password}", "smslink{password}", "123456"),
    "meitrack": FamilyCommands("{password},A00", "{password},A00", "0000"),
    "suntech": FamilyCommands("ST300CMD;{identifier};02;StatusReq", "ST300CMD;{identifier};02;StatusReq"),
    "enfora": FamilyCommands("AT$GPSRD=10", "AT$GPSRD=10"),
    "gps103": FamilyCommands("check{password}", "check{password}", "123456"),
    "atrack": FamilyCommands("AT$INFO=?", "AT$INFO=?"),
    "ruptela": FamilyCommands("{password} version", "{password} coords", ""),
    "galileo": FamilyCommands("Status", "Status"),
}

# Words that must never appear in what we send: output (engine stop), reset, configuration.
FORBIDDEN = ("S20", "STOPELEC", "SUPPLYELEC", "RELAY", "DYD", "HFYD", "SETDIGOUT", "REBOOT", "RESET", "FACTORY",
             "CPURESET", "APN", "SERVER", "ADMINIP")


def _render(template: str, protocol: str, identifier: str, options: dict[str, Any] | None) -> str:
    family = FAMILIES[protocol]
    opts = options or {}
    password = str(opts.get("sms_password") if opts.get("sms_password") is not None else family.default_password or "")
    login = str(opts.get("sms_login") or "")
    return template.format(password=password, login=login, identifier=identifier)


def status_command(protocol: str, identifier: str, options: dict[str, Any] | None = None) -> str | None:
    """The family's status query for this device, or None when the family takes no SMS commands."""
    if protocol not in FAMILIES:
        return None
    return _render(FAMILIES[protocol].status, protocol, identifier, options)


def position_command(protocol: str, identifier: str, options: dict[str, Any] | None = None) -> str | None:
    """The family's position query for this device ("locate now"), or None."""
    if protocol not in FAMILIES:
        return None
    return _render(FAMILIES[protocol].position, protocol, identifier, options)
