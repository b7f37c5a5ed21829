"""SMPP 3.4 SMSC simulator: ``avl smsc [--port 2775]``.

See :mod:`simulators.smsc.server` for the routing model (handset gateway bound with an
address_range, delivery receipts, store-and-forward, throttling) and
:mod:`simulators.smsc.pdu` for the PDU codec.
"""

from simulators.smsc.pdu import CommandId, MessageState, Pdu, PduError, Status, Tag
from simulators.smsc.server import BindMode, Smsc, SmscThread, main, serve
from simulators.smsc.store import Kind, Message, MessageStore

__all__ = [
    "BindMode",
    "CommandId",
    "Kind",
    "Message",
    "MessageState",
    "MessageStore",
    "Pdu",
    "PduError",
    "Smsc",
    "SmscThread",
    "Status",
    "Tag",
    "main",
    "serve",
]
