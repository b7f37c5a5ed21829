"""GPS103 (Coban GPS-103 / TK-103A/B and clones, the ``imei:`` text protocol), TCP and UDP.

Messages are ASCII; over TCP they end at ``;``, ``*``, ``\\r\\n`` or ``\\n`` (the delimiter is
stripped, so both forms reach the decoder)::

    ##,imei:<imei>,A                      handshake (login)          -> LOAD
    <imei>                                heartbeat (bare IMEI)      -> ON
    imei:<imei>,<keyword>,<local yymmddhhmm[ss]>,<phone|rfid>,F,<hhmmss.sss UTC>,A|V,
        [N|S,]ddmm.mmmm,[N|S,][E|W,]dddmm.mmmm,[E|W],<speed kn>,<course>[,<alt m>,<ign 0|1>,
        <door 0|1>,<fuel1 %>,<fuel2 %>,<temp>]                     located report
    imei:<imei>,<keyword>,<date>,<phone|rfid>,L,[,,<lac hex>,,<cid hex>,,,]    no GPS: status record
    imei:<imei>,OBD,<yymmddhhmmss>,<odometer>,<fuel now>,<fuel avg>,<hours>,<speed km/h>,
        <load %>,<coolant °C>,<throttle %>,<rpm>,<battery V>,<dtcs>  status record
    imei:<imei>,<name>,<event>,<sensor id>,<sensor V>,<hhmmss>,<ddmmyy>,<rssi>,<fix 0|1>,
        <lat>,<lon>,<speed km/h>,<course>,<alt>,<hdop>,<sats>,<ign>,<charge>,<error>,*   (alternative)
    imei:<imei>,vr,<hex>                  photo chunk (not kept)

Keywords: ``tracker`` periodic; ``help me`` SOS (answered ``**,imei:<imei>,E;``); ``low battery``,
``stockade`` geofence, ``move``, ``speed`` overspeed, ``door alarm``, ``ac alarm`` power cut,
``accident alarm``, ``sensor alarm`` vibration, ``bonnet alarm``, ``footbrake alarm``, ``DTC``
fault, ``T:<temp>`` temperature, ``oil...`` fuel leak (``oil <level>`` also fuel);
``acc on``/``acc off`` ignition; ``rfid`` keeps the driver id; others become ``event``.

The local date/time field is the unit's clock in its own time zone; the GPS part's time is UTC.
As the reference server does, the offset is the difference of their hh:mm (within ±12 h), and the
fix time is the local date and time moved by it (seconds from the UTC field).

Decisions: no checksum exists. Ordinary reports get no answer (the units expect none). A report
whose GPS part is missing (``L``) is a status record at server time, with its cell as
``network.cellTowers`` (no made-up location). Photo chunks are answered with nothing and not
kept. An OBD report with fields missing is kept with what it has.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

from avl.records import Position
from ingest.protocols.base import (
    KNOTS_TO_KMH,
    DecodeError,
    DecodeResult,
    Protocol,
    Session,
    nmea_degrees,
    nmea_text,
    text,
    utc,
)

_DELIMITERS = b";*\n"

_REGULAR = re.compile(
    r"imei:(?P<imei>\d+),"
    r"(?P<keyword>[^,]*),"
    r"(?:(?P<ly>\d\d)/?(?P<lmo>\d\d)/?(?P<ld>\d\d) ?(?P<lh>\d\d):?(?P<lmi>\d\d)(?:\d\d)?,|\d*,)"
    r"(?P<rfid>[^,]+)?,"
    r"(?:L,(?:,,(?P<lac>[0-9A-Fa-f]+),,(?P<cid>[0-9A-Fa-f]+),,,)?"
    r"|F,(?:(?P<uh>\d\d)(?P<umi>\d\d)(?P<us>\d\d)(?:\.\d+)?|(?:\d{1,5}\.\d+)?),"
    r"(?P<valid>[AV]),"
    r"(?:(?P<h1>[NS]),)?"
    r"(?P<lat>\d+\d\d\.\d+),"
    r"(?:(?P<h2>[NS]),)?"
    r"(?:(?P<h3>[EW]),)?"
    r"(?P<lon>\d+\d\d\.\d+),"
    r"(?:(?P<h4>[EW])?,)?"
    r"(?P<speed>\d+\.?\d*)?"
    r"(?:,(?P<course>\d+\.?\d*)?)?"
    r"(?:,(?P<altitude>-?\d+\.?\d*)?)?"
    r"(?:,(?P<ignition>[01])?)?"
    r"(?:,(?P<door>[01])?)?"
    r"(?:,(?:(?P<fuel1>\d+\.\d+)%)?,(?:(?P<fuel2>\d+\.\d+)%|\d+)?)?"
    r"(?:,(?P<temp>[-+]?\d+)?)?"
    r")"
    r".*",
    re.DOTALL | re.ASCII,
)

_OBD = re.compile(
    r"imei:(?P<imei>\d+),OBD,"
    r"(?P<y>\d\d)(?P<mo>\d\d)(?P<d>\d\d)(?P<h>\d\d)(?P<mi>\d\d)(?P<s>\d\d),"
    r"(?P<odometer>\d+)?,"
    r"(?:\d+\.\d+)?,"  # instant fuel consumption
    r"(?P<fuel>\d+\.\d+)?,"  # average fuel consumption
    r"(?P<hours>\d+)?,"
    r"(?P<speed>\d+)?,"
    r"(?:(?P<load>\d+\.?\d*)%)?,"
    r"(?:(?P<coolant>[-+]?\d+)|[-+]?),"
    r"(?:(?P<throttle>\d+\.?\d*)%)?,"
    r"(?P<rpm>\d+)?,"
    r"(?P<battery>\d+\.\d+)?,?"
    r"(?P<dtcs>[^;]*)"
    r".*",
    re.DOTALL | re.ASCII,
)

_ALTERNATIVE = re.compile(
    r"imei:(?P<imei>\d+),"
    r"[^,]+,"
    r"(?:-+|(?P<event>[^,]+)),"
    r"(?:-+|(?P<sensor>[^,]+)),"
    r"(?:-+|(?P<voltage>[^,]+)),"
    r"(?P<h>\d\d)(?P<mi>\d\d)(?P<s>\d\d),"
    r"(?P<d>\d\d)(?P<mo>\d\d)(?P<y>\d\d),"
    r"(?P<rssi>\d+),"
    r"(?P<fix>\d),"
    r"(?P<lat>-?\d+\.\d+),"
    r"(?P<lon>-?\d+\.\d+),"
    r"(?P<speed>\d+),"
    r"(?P<course>\d+),"
    r"(?P<altitude>-?\d+),"
    r"(?P<hdop>\d+\.\d+),"
    r"(?P<sats>\d+),"
    r"(?P<ignition>[01]),"
    r"(?P<charge>[01]),"
    r"(?:-+|(?P<error>[^,*]+))"
    r",?\*?",
    re.DOTALL | re.ASCII,
)

_LOGIN_IMEI = re.compile(r"imei:(\d+),")
_PHOTO = re.compile(r"imei:\d+,vr", re.ASCII)
_HEARTBEAT = re.compile(r"\d{8,20}", re.ASCII)

_ALARMS = {
    "help me": "sos", "low battery": "lowBattery", "stockade": "geofence", "move": "movement",
    "speed": "overspeed", "door alarm": "door", "ac alarm": "powerCut", "accident alarm": "accident",
    "sensor alarm": "vibration", "bonnet alarm": "bonnet", "footbrake alarm": "footBrake", "DTC": "fault",
}


def _alarm(keyword: str) -> str | None:
    if keyword.startswith("T:"):
        return "temperature"
    if keyword.startswith("oil"):
        return "fuelLeak"
    return _ALARMS.get(keyword)


def _fix_time(m: re.Match[str]) -> datetime:
    """The unit's local date and hh:mm moved by its offset from the UTC hh:mm of the GPS part."""
    if m["ly"] is None:
        raise ValueError("no local date for the fix")
    local = utc(int(m["ly"]), int(m["lmo"]), int(m["ld"]), int(m["lh"]), int(m["lmi"]), int(m["us"] or 0))
    if m["uh"] is None:
        return local
    delta = (int(m["lh"]) - int(m["uh"])) * 60 + int(m["lmi"]) - int(m["umi"])
    if delta <= -12 * 60:
        delta += 24 * 60
    elif delta > 12 * 60:
        delta -= 24 * 60
    return local - timedelta(minutes=delta)


class Gps103Protocol(Protocol):
    name = "gps103"
    port = 5001
    transports = frozenset({"tcp", "udp"})
    max_frame = 4096

    def split(self, buffer: bytes) -> tuple[bytes | None, int]:
        ends = [i for i in (buffer.find(bytes((d,))) for d in _DELIMITERS) if i >= 0]
        if not ends:
            if len(buffer) >= self.max_frame:
                raise self.too_long(buffer)
            return None, 0
        end = min(ends)
        frame = buffer[:end].strip(b"\r\n\x00 ")
        return (frame or None), end + 1

    def decode(self, frame: bytes, session: Session) -> DecodeResult:
        previous = session.device
        try:
            return self._decode(frame, session)
        except DecodeError:
            session.device = previous
            raise
        except (ValueError, IndexError, OverflowError) as exc:
            session.device = previous
            raise self.error(f"malformed report: {exc}", frame) from exc

    # ------------------------------------------------------------------------------

    def _decode(self, frame: bytes, session: Session) -> DecodeResult:
        sentence = text(frame).strip("\r\n\x00 ").removesuffix(";")
        if not sentence:
            raise self.error("empty message", frame)
        if "imei:" in sentence and len(sentence) <= 30:
            login = _LOGIN_IMEI.search(sentence)
            if login is not None:
                session.device = login[1]
            return DecodeResult(reply=b"LOAD")
        reply = None
        if sentence[0].isdigit():
            reply = b"ON"
            start = sentence.find("imei:")
            if start < 0:
                beat = _HEARTBEAT.match(sentence)
                if beat is not None:
                    session.device = beat[0]
                return DecodeResult(reply=reply)
            sentence = sentence[start:]
        if not sentence.startswith("imei:"):
            raise self.error("not an imei: report", frame)
        if _PHOTO.match(sentence):
            return DecodeResult(reply=reply)  # a photo chunk: not kept
        obd = _OBD.fullmatch(sentence)
        if obd is not None:
            return DecodeResult([self._obd(obd, frame, session)], reply)
        alternative = _ALTERNATIVE.fullmatch(sentence)
        if alternative is not None:
            return DecodeResult([self._alternative(alternative, frame, session)], reply)
        regular = _REGULAR.fullmatch(sentence)
        if regular is None:
            raise self.error("report not readable", frame)
        position = self._regular(regular, frame, session)
        if regular["keyword"] == "help me":
            reply = (reply or b"") + f"**,imei:{regular['imei']},E;".encode("ascii")
        return DecodeResult([position], reply)

    def _regular(self, m: re.Match[str], frame: bytes, session: Session) -> Position:
        session.device = m["imei"]
        keyword = m["keyword"]
        fields: dict[str, Any] = {"alarm": _alarm(keyword)}
        attributes: dict[str, Any] = {}
        if keyword in ("acc on", "acc off"):
            fields["ignition"] = keyword == "acc on"
        elif keyword.startswith("T:"):
            attributes["temp1"] = float(keyword[2:])
        elif keyword.startswith("oil "):
            attributes["fuel"] = float(keyword[4:])
        elif fields["alarm"] is None and keyword not in ("tracker", "") and not keyword.startswith("vt"):
            attributes["event"] = keyword
        if keyword == "rfid" and m["rfid"]:
            attributes["driverUniqueId"] = m["rfid"]

        if m["valid"] is None:  # "L": no GPS fix
            if m["lac"] is not None:
                attributes["network"] = {"cellTowers": [
                    {"locationAreaCode": int(m["lac"], 16), "cellId": int(m["cid"], 16)}]}
            return self.position(session, session.now(), frame, attributes=attributes, **fields)

        latitude = nmea_degrees(m["lat"], m["h1"] or m["h2"] or "")
        longitude = nmea_degrees(m["lon"], m["h3"] or m["h4"] or "")
        if abs(latitude) > 90 or abs(longitude) > 180:
            raise self.error(f"coordinates {latitude:.5f},{longitude:.5f} out of range", frame)
        if m["ignition"] is not None:
            fields["ignition"] = m["ignition"] == "1"
        if m["door"] is not None:
            attributes["door"] = m["door"] == "1"
        for key in ("fuel1", "fuel2"):
            if m[key] is not None:
                attributes[key] = float(m[key])
        if m["temp"] is not None:
            attributes["temp1"] = int(m["temp"])
        return self.position(
            session, _fix_time(m), frame,
            valid=m["valid"] == "A",
            latitude=latitude,
            longitude=longitude,
            speed_kmh=float(m["speed"]) * KNOTS_TO_KMH if m["speed"] else None,
            course=float(m["course"]) if m["course"] else None,
            altitude_m=float(m["altitude"]) if m["altitude"] else None,
            attributes=attributes,
            **fields,
        )

    def _obd(self, m: re.Match[str], frame: bytes, session: Session) -> Position:
        session.device = m["imei"]
        fields: dict[str, Any] = {}
        attributes: dict[str, Any] = {}
        if m["odometer"]:
            fields["odometer_m"] = int(m["odometer"])
        if m["battery"]:
            fields["battery_mv"] = round(float(m["battery"]) * 1000)
        if m["fuel"]:
            attributes["fuelConsumption"] = float(m["fuel"])
        if m["hours"]:
            attributes["hours"] = int(m["hours"]) * 3_600_000  # the reference keeps engine hours in ms
        for key, name, kind in (("speed", "obdSpeed", int), ("load", "engineLoad", float),
                                ("coolant", "coolantTemp", int), ("throttle", "throttle", float), ("rpm", "rpm", int)):
            if m[key]:
                attributes[name] = kind(m[key])
        dtcs = m["dtcs"].replace(",", " ").strip()
        if dtcs:
            attributes["dtcs"] = dtcs
        fix_time = utc(int(m["y"]), int(m["mo"]), int(m["d"]), int(m["h"]), int(m["mi"]), int(m["s"]))
        return self.position(session, fix_time, frame, attributes=attributes, **fields)

    def _alternative(self, m: re.Match[str], frame: bytes, session: Session) -> Position:
        session.device = m["imei"]
        latitude, longitude = float(m["lat"]), float(m["lon"])
        if abs(latitude) > 90 or abs(longitude) > 180:
            raise self.error(f"coordinates {latitude:.5f},{longitude:.5f} out of range", frame)
        attributes: dict[str, Any] = {"rssi": int(m["rssi"]), "charge": m["charge"] == "1"}
        for key, name in (("event", "event"), ("sensor", "sensorId"), ("error", "error")):
            if m[key]:
                attributes[name] = m[key]
        if m["voltage"]:
            try:
                attributes["sensorVoltage"] = float(m["voltage"])
            except ValueError:
                attributes["sensorVoltage"] = m["voltage"]
        fix_time = utc(int(m["y"]), int(m["mo"]), int(m["d"]), int(m["h"]), int(m["mi"]), int(m["s"]))
        return self.position(
            session, fix_time, frame,
            valid=int(m["fix"]) > 0,
            latitude=latitude,
            longitude=longitude,
            speed_kmh=float(m["speed"]),
            course=float(m["course"]),
            altitude_m=float(m["altitude"]),
            hdop=float(m["hdop"]),
            satellites=int(m["sats"]),
            ignition=m["ignition"] == "1",
            attributes=attributes,
        )


# Encoders for tests and the device simulator ---------------------------------------------


def encode_login(device: str) -> bytes:
    """The handshake ``##,imei:<imei>,A;``; the server answers ``LOAD``."""
    return f"##,imei:{device},A;".encode("ascii")


def encode_position(p: Position, sequence: int = 0) -> bytes:
    """A ``tracker`` report (clock in UTC), speed in knots, course, altitude and ignition."""
    t = p.fix_time
    lat = p.latitude or 0.0
    lon = p.longitude or 0.0
    knots = (p.speed_kmh or 0.0) / KNOTS_TO_KMH
    ignition = "" if p.ignition is None else ("1" if p.ignition else "0")
    return (
        f"imei:{p.device},tracker,{t:%y%m%d%H%M%S},,F,{t:%H%M%S}.000,{'A' if p.valid else 'V'},"
        f"{nmea_text(lat, 2)},{'S' if lat < 0 else 'N'},{nmea_text(lon, 3)},{'W' if lon < 0 else 'E'},"
        f"{knots:.2f},{p.course or 0:.2f},{p.altitude_m or 0:.1f},{ignition},,,,;"
    ).encode("ascii")


PROTOCOL = Gps103Protocol()
