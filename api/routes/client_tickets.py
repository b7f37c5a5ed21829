"""What a fleet client sees of its support cases, and where to take a vehicle.

- ``GET /tickets``, ``GET /tickets/{ref}``: the account's tickets with their customer-facing
  parts only: the state, what happens now (specific to the case: fixed remotely, checked with
  the carrier, or which center to take the vehicle to and by when), the deadline, and what the
  customer was told (``customer_message`` of the activities). Never the support desk's reasons,
  notes or pending work. In the user's language (``PUT /auth/language``), else ``AVL_LANGUAGE``.
- ``GET /installation-centers``: the certified centers with address, phone, opening hours and
  the distance from one of the account's vehicles (its last position) or from a given point.

Tenancy as everywhere: another account's ticket or vehicle answers 404 like a missing one.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Path, Query, Request
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from pydantic import BaseModel, Field

from api.auth import language_of
from api.deps import ApiError, Db, User, device_in_scope, not_found, require
from avl.config import Settings, load_settings
from diagnostics import tickets

router = APIRouter(prefix="/api/v1", tags=["support cases"])

Client = Annotated[User, require("client")]
CenterReader = Annotated[User, require("client", "support", "installer")]
TicketRef = Annotated[str, Path(description="The ticket's id or the number the customer quotes",
                                examples=["AVL-2026-000042"])]


class Center(BaseModel):
    id: int = Field(examples=[1])
    name: str = Field(examples=["Centro Chacao"])
    address: str | None = Field(examples=["Av. Francisco de Miranda, Chacao, Caracas"])
    phone: str | None = Field(examples=["+58 212 555 0101"])
    hours: str | None = Field(examples=["Lu-Vi 8:00-17:00, Sa 8:00-12:00"])
    latitude: float = Field(examples=[10.4961])
    longitude: float = Field(examples=[-66.8530])
    distance_km: float | None = Field(description="Great-circle distance from the vehicle or point (none without one)",
                                      examples=[0.9])


class Message(BaseModel):
    at: datetime
    channel: str = Field(examples=["sms"])
    text: str = Field(examples=["Vehiculo AB123CD: equipo sin comunicacion. Caso AVL-2026-000042. ..."])


class ClientTicket(BaseModel):
    id: int = Field(examples=[3])
    number: str = Field(examples=["AVL-2026-000042"])
    state: Literal["open", "in_progress", "waiting_customer", "at_installation_center", "resolved", "closed"] = Field(
        examples=["open"])
    state_label: str = Field(examples=["abierto"])
    type: str = Field(examples=["field_service"])
    what: str = Field(description="The fault or request, in the user's language", examples=["Equipo sin comunicación"])
    device_id: int | None = Field(examples=[42])
    plate: str | None = Field(examples=["AB123CD"])
    opened_at: datetime
    resolved_at: datetime | None
    closed_at: datetime | None
    instruction: str = Field(description="What happens now, or what the customer is to do",
                             examples=["Lleve el vehículo AB123CD hasta el 15/12/2026 a un centro de instalación "
                                       "certificado: Centro Chacao, Av. Francisco de Miranda."])
    bring_in_due_at: datetime | None = Field(description="Field service: the vehicle at a certified center by then")
    bring_in_overdue: bool = Field(examples=[False])
    center: Center | None = Field(description="The certified center the case named")


class ClientTicketDetail(ClientTicket):
    messages: list[Message] = Field(description="What the customer was told, oldest first")


TICKET_SQL = """
SELECT t.id, t.number, t.state, t.type, t.category, t.device_id, v.plate, d.identifier, t.opened_at, t.resolved_at,
       t.closed_at, t.bring_in_due_at, t.brought_in_at, t.dead_on_arrival,
       c.id AS center_id, c.name AS center_name, c.address AS center_address, c.phone AS center_phone,
       c.hours AS center_hours, c.latitude AS center_latitude, c.longitude AS center_longitude
FROM tickets t LEFT JOIN devices d ON d.id = t.device_id LEFT JOIN vehicles v ON v.id = d.vehicle_id
LEFT JOIN installation_centers c ON c.id = t.center_id
WHERE (%(scope)s::bigint IS NULL OR t.account_id = %(scope)s::bigint) AND t.type <> 'platform'
"""


async def _people(request: Request, conn: AsyncConnection, user: User) -> tuple[str, ZoneInfo]:
    settings: Settings = getattr(request.app.state, "settings", None) or load_settings()
    return (await language_of(conn, user.id)) or settings.language, ZoneInfo(settings.customer_timezone)


def _out(row: dict[str, Any], lang: str, tz: ZoneInfo) -> dict[str, Any]:
    center = None
    if row["center_id"] is not None:
        center = {"id": row["center_id"], "name": row["center_name"], "address": row["center_address"],
                  "phone": row["center_phone"], "hours": row["center_hours"], "latitude": row["center_latitude"],
                  "longitude": row["center_longitude"], "distance_km": None}
    due = row["bring_in_due_at"]
    return {
        "id": row["id"], "number": row["number"], "state": row["state"],
        "state_label": tickets.label("state", row["state"], lang) or row["state"], "type": row["type"],
        "what": tickets.label("category", row["category"], lang) or tickets.label("type", row["type"], lang)
        or row["type"],
        "device_id": row["device_id"], "plate": row["plate"], "opened_at": row["opened_at"],
        "resolved_at": row["resolved_at"], "closed_at": row["closed_at"],
        "instruction": tickets.customer_instruction(row, center, lang, tz), "bring_in_due_at": due,
        "bring_in_overdue": bool(due and row["brought_in_at"] is None and row["state"] not in tickets.CLOSED
                                 and due < datetime.now(UTC)),
        "center": center,
    }


@router.get("/tickets", response_model=list[ClientTicket], summary="My account's support cases")
async def list_tickets(
    request: Request, user: Client, conn: Db,
    device_id: Annotated[int | None, Query(description="One vehicle's cases", examples=[42])] = None,
    open_only: Annotated[bool, Query(description="Only cases not resolved or closed")] = False,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[ClientTicket]:
    """Newest first."""
    lang, tz = await _people(request, conn, user)
    sql = TICKET_SQL + (" AND t.device_id = %(device)s" if device_id is not None else "") + \
        (" AND t.state NOT IN ('resolved', 'closed')" if open_only else "") + \
        " ORDER BY t.opened_at DESC, t.id DESC LIMIT %(limit)s OFFSET %(offset)s"
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, {"scope": user.account_scope(), "device": device_id, "limit": limit, "offset": offset})
        rows = await cur.fetchall()
    return [ClientTicket(**_out(r, lang, tz)) for r in rows]


@router.get("/tickets/{ref}", response_model=ClientTicketDetail, summary="One of my account's support cases")
async def get_ticket(ref: TicketRef, request: Request, user: Client, conn: Db) -> ClientTicketDetail:
    """By id or by its number: its state, what happens now and what the customer was told."""
    lang, tz = await _people(request, conn, user)
    by_id = ref.isascii() and ref.isdigit()
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(TICKET_SQL + (" AND t.id = %(ref)s" if by_id else " AND t.number = upper(%(ref)s)"),
                          {"scope": user.account_scope(), "ref": int(ref) if by_id else ref})
        row = await cur.fetchone()
        if row is None:  # the number is not echoed: another account's would be named back
            raise not_found("ticket")
        await cur.execute("SELECT at, channel, customer_message AS text FROM ticket_activities WHERE ticket_id = %s"
                          " AND customer_message IS NOT NULL ORDER BY at, id", (row["id"],))
        messages = await cur.fetchall()
    return ClientTicketDetail(**_out(row, lang, tz), messages=[Message(**m) for m in messages])


@router.get("/installation-centers", response_model=list[Center], summary="Certified installation centers",
            responses={404: {"description": "no such vehicle (another account's looks the same)"}})
async def installation_centers(
    user: CenterReader, conn: Db,
    device_id: Annotated[int | None, Query(description="Nearest to this vehicle's last position", examples=[42])] = None,
    lat: Annotated[float | None, Query(ge=-90, le=90, description="Nearest to this point (with lon)",
                                       examples=[10.4970])] = None,
    lon: Annotated[float | None, Query(ge=-180, le=180, examples=[-66.8460])] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[Center]:
    """Nearest first from the vehicle or the point; by name without one (or when the vehicle has
    not reported a position yet, ``distance_km`` then being null)."""
    if (lat is None) != (lon is None):
        raise ApiError(422, "invalid_request", f"{'lon' if lon is None else 'lat'}: give both lat and lon")
    if device_id is not None:
        if lat is not None:
            raise ApiError(422, "invalid_request", "device_id: give either a vehicle or a point (lat, lon)")
        await device_in_scope(conn, user, device_id)
        cur = await conn.execute("SELECT latitude, longitude FROM latest_positions WHERE device_id = %s", (device_id,))
        found = await cur.fetchone()
        lat, lon = found if found else (None, None)
    return [Center(**c) for c in await tickets.nearest_centers(conn, lat, lon, limit)]
