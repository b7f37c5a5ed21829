"""Location-report exports (CSV, GPX 1.1, KML 2.2, GeoJSON) for a vehicle and a period.

Customers back billing claims with these, so an export holds every stored report of the
period (valid or not, never simplified), in fix-time order, with times in UTC ISO 8601.
Each format is written incrementally (``head``, ``rows`` for each batch, ``tail``) so a long
period streams without being held in memory.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from api.geo import iso

# The columns of the positions table an export carries, in this order.
COLUMNS = ("fix_time", "received_at", "valid", "latitude", "longitude", "speed_kmh", "course", "altitude_m",
           "satellites", "hdop", "ignition", "power_mv", "battery_mv", "odometer_m", "alarm", "flags")
SELECT = ", ".join(COLUMNS)
GPX_EXT_NS = "urn:avl-server:gpx-extensions:1"


@dataclass(frozen=True)
class Meta:
    device_id: int
    identifier: str
    plate: str | None
    start: datetime
    end: datetime
    generated_at: datetime

    @property
    def label(self) -> str:
        return self.plate or self.identifier


@dataclass(frozen=True)
class Format:
    name: str
    media_type: str
    extension: str


FORMATS = {
    "csv": Format("csv", "text/csv; charset=utf-8", "csv"),
    "gpx": Format("gpx", "application/gpx+xml", "gpx"),
    "kml": Format("kml", "application/vnd.google-earth.kml+xml", "kml"),
    "geojson": Format("geojson", "application/geo+json", "geojson"),
}


def filename(meta: Meta, fmt: Format) -> str:
    """``<plate or identifier>_<from>_<to>.<ext>``, safe in a Content-Disposition header."""
    label = re.sub(r"[^A-Za-z0-9_-]+", "-", meta.label).strip("-") or f"device-{meta.device_id}"
    return f"{label}_{meta.start:%Y%m%dT%H%M%SZ}_{meta.end:%Y%m%dT%H%M%SZ}.{fmt.extension}"


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return iso(value)
    return str(value)


class Writer:
    """One export being written: ``head()``, ``rows(batch)`` per batch of rows (tuples in
    ``COLUMNS`` order), ``tail()``."""

    def __init__(self, meta: Meta) -> None:
        self.meta = meta

    def head(self) -> str:
        raise NotImplementedError

    def rows(self, batch: Sequence[Sequence[Any]]) -> str:
        raise NotImplementedError

    def tail(self) -> str:
        return ""


class CsvWriter(Writer):
    def head(self) -> str:
        return self._lines([("device_id", "identifier", "plate", *COLUMNS)])

    def rows(self, batch: Sequence[Sequence[Any]]) -> str:
        m = self.meta
        return self._lines([(m.device_id, m.identifier, m.plate, *row) for row in batch])

    @staticmethod
    def _lines(rows: Sequence[Sequence[Any]]) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\r\n")  # RFC 4180
        writer.writerows([_text(v) for v in row] for row in rows)
        return buffer.getvalue()


class GpxWriter(Writer):
    """One track segment; each report a ``trkpt`` (``<fix>none</fix>`` for an invalid fix),
    with speed, course, ignition, power, arrival time and flags as extensions."""

    def head(self) -> str:
        m = self.meta
        title = escape(f"{m.label} {iso(m.start)}/{iso(m.end)}")
        return ('<?xml version="1.0" encoding="UTF-8"?>\n'
                f'<gpx version="1.1" creator="AVL server" xmlns="http://www.topografix.com/GPX/1/1"'
                f' xmlns:avl="{GPX_EXT_NS}">\n'
                f"<metadata><name>{title}</name><time>{iso(m.generated_at)}</time></metadata>\n"
                f"<trk><name>{escape(m.label)}</name><trkseg>\n")

    def rows(self, batch: Sequence[Sequence[Any]]) -> str:
        out = []
        for (fix_time, received_at, valid, lat, lon, speed, course, alt, sats, hdop, ignition, power, battery,
             odometer, alarm, flags) in batch:
            parts = [f'<trkpt lat="{lat!r}" lon="{lon!r}">']
            if alt is not None:
                parts.append(f"<ele>{alt}</ele>")
            parts.append(f"<time>{iso(fix_time)}</time>")
            if not valid:
                parts.append("<fix>none</fix>")
            if sats is not None:
                parts.append(f"<sat>{max(int(sats), 0)}</sat>")
            if hdop is not None:
                parts.append(f"<hdop>{hdop}</hdop>")
            ext = [f"<avl:{k}>{escape(_text(v))}</avl:{k}>" for k, v in (
                ("speed_kmh", speed), ("course", course), ("ignition", ignition), ("power_mv", power),
                ("battery_mv", battery), ("odometer_m", odometer), ("alarm", alarm)) if v is not None]
            ext.append(f"<avl:received_at>{iso(received_at)}</avl:received_at><avl:flags>{flags}</avl:flags>")
            parts.append(f"<extensions>{''.join(ext)}</extensions></trkpt>\n")
            out.append("".join(parts))
        return "".join(out)

    def tail(self) -> str:
        return "</trkseg></trk>\n</gpx>\n"


class KmlWriter(Writer):
    """A folder with one time-stamped placemark per report (every column in ExtendedData),
    then the track of the valid fixes as a line."""

    def __init__(self, meta: Meta) -> None:
        super().__init__(meta)
        self.line: list[str] = []

    def head(self) -> str:
        m = self.meta
        return ('<?xml version="1.0" encoding="UTF-8"?>\n<kml xmlns="http://www.opengis.net/kml/2.2"><Document>\n'
                f"<name>{escape(m.label)} {iso(m.start)}/{iso(m.end)}</name>\n<Folder><name>Reports</name>\n")

    def rows(self, batch: Sequence[Sequence[Any]]) -> str:
        out = []
        for row in batch:
            fix_time, valid, lat, lon, alt = row[0], row[2], row[3], row[4], row[7]
            coords = f"{lon!r},{lat!r}" + ("" if alt is None else f",{alt}")
            if valid:
                self.line.append(coords)
            data = "".join(f'<Data name={quoteattr(name)}><value>{escape(_text(value))}</value></Data>'
                           for name, value in zip(COLUMNS, row, strict=True))
            out.append(f"<Placemark><name>{iso(fix_time)}</name><TimeStamp><when>{iso(fix_time)}</when></TimeStamp>"
                       f"<ExtendedData>{data}</ExtendedData><Point><coordinates>{coords}</coordinates></Point>"
                       "</Placemark>\n")
        return "".join(out)

    def tail(self) -> str:
        track = ""
        if len(self.line) >= 2:
            track = (f"<Placemark><name>{escape(self.meta.label)} track</name><LineString><tessellate>1</tessellate>"
                     f"<coordinates>{' '.join(self.line)}</coordinates></LineString></Placemark>\n")
        return f"</Folder>\n{track}</Document></kml>\n"


class GeoJsonWriter(Writer):
    """A FeatureCollection of Point features (RFC 7946: [lon, lat(, altitude)]), every column
    a property; the export's own description under the foreign member ``export``."""

    def __init__(self, meta: Meta) -> None:
        super().__init__(meta)
        self.first = True

    def head(self) -> str:
        m = self.meta
        about = {"device_id": m.device_id, "identifier": m.identifier, "plate": m.plate, "from": iso(m.start),
                 "to": iso(m.end), "generated_at": iso(m.generated_at)}
        return '{"type": "FeatureCollection", "export": ' + json.dumps(about) + ', "features": [\n'

    def rows(self, batch: Sequence[Sequence[Any]]) -> str:
        out = []
        for row in batch:
            lat, lon, alt = row[3], row[4], row[7]
            props = {name: (iso(v) if isinstance(v, datetime) else v) for name, v in zip(COLUMNS, row, strict=True)}
            feature = {"type": "Feature", "geometry": {"type": "Point",
                                                       "coordinates": [lon, lat] if alt is None else [lon, lat, alt]},
                       "properties": props}
            out.append(("" if self.first else ",\n") + json.dumps(feature))
            self.first = False
        return "".join(out)

    def tail(self) -> str:
        return "\n]}\n"


WRITERS: dict[str, type[Writer]] = {"csv": CsvWriter, "gpx": GpxWriter, "kml": KmlWriter, "geojson": GeoJsonWriter}
