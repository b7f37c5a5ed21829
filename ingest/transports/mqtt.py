"""MQTT input: ``avl/in/<protocol>/<device>``, QoS 1, persistent session, shared subscription.

The payload is the device's own frame (``<protocol>`` one of the decoders) or the project's
JSON report format (``<protocol>`` = ``json``). The topic names the device, and a message
may only carry reports of that device.

Without ``AVL_MQTT_GROUP`` the first ingest process alone holds a plain persistent subscription.
With it, every process (``AVL_INGEST_PROCESSES``) holds the one shared subscription with a session
of its own (:func:`subscriber`) and the broker gives each message to one of them. The cost, and
why sharing is not the default: Mosquitto 2.0 forgets a persistent session's shared subscription
when it restarts, so a message published after a broker restart and before the processes have
subscribed again is PUBACKed by the broker and never delivered (tests/reliability/test_broker_restart.py).

PUBACK only after commit. aiomqtt has no public manual acknowledgement yet, so this
turns on paho-mqtt's own ``manual_ack`` on the client aiomqtt wraps (``Client._client``,
one private attribute used; the other is aiomqtt's incoming queue, read without a task per
message when it holds some) before connecting, and calls paho's ``ack(mid, qos)``
once the message's rows are durable. aiomqtt drives paho from the asyncio loop's socket
callbacks, so calling ``ack`` from the same loop is safe. Acks go out in the order the
messages arrived (MQTT 3.1.1 section 4.6), through a single acker task. A message that
could not be made durable is not acked: the broker redelivers it after a reconnect.
A message refused for what it is (malformed, unknown device, another device's identity) is
counted, recorded where it can be (unknown devices) and acked: redelivering it cannot help,
and unacked messages would fill the broker's in-flight window and stall all MQTT input.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from urllib.parse import urlsplit

import aiomqtt

from ingest import metrics
from ingest.intake import Intake, Pending
from ingest.protocols import ALL_NAMES, Protocol, Session, get

log = logging.getLogger("avl.ingest.mqtt")

TOPIC_PREFIX = "avl/in/"


def client_params(url: str) -> dict[str, object]:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "tcp", ""):
        raise ValueError(f"unsupported MQTT URL scheme {parts.scheme!r} (use mqtt://host:port)")
    return {"hostname": parts.hostname or "127.0.0.1", "port": parts.port or 1883,
            "username": parts.username, "password": parts.password}


def subscriber(group: str, client_id: str | None, process: int = 0, processes: int = 1) -> tuple[str, str] | None:
    """The shared-subscription group ("": a plain subscription) and client id of ingest process
    ``process`` (0-based) of ``processes``; None: this process takes no MQTT input.

    With a group (``AVL_MQTT_GROUP``) every process takes the input through the one shared
    subscription, each with its own persistent session (the client id, ``-<n>`` added after the
    first). Without one, the first process alone takes it on a plain persistent subscription:
    Mosquitto 2.0 forgets shared subscriptions when it restarts (see the module docstring), so
    sharing is the operator's choice, not the default."""
    base = client_id or f"avl-ingest-{socket.gethostname()}"
    if process == 0:
        return group, base
    return (group, f"{base}-{process + 1}") if group and processes > 1 else None


class MqttInput:
    def __init__(self, url: str, intake: Intake, *, group: str = "avl-ingest", client_id: str | None = None,
                 max_inflight: int = 1000, reconnect_s: float = 1.0) -> None:
        self.params = client_params(url)
        self.intake = intake
        self.group = group
        self.client_id = client_id or f"avl-ingest-{socket.gethostname()}"
        self.max_inflight = max_inflight
        self.reconnect_s = reconnect_s
        self.sessions: dict[tuple[str, str], Session] = {}
        self.connected = asyncio.Event()
        self.received = 0
        self.acked = 0

    @property
    def subscription(self) -> str:
        return f"$share/{self.group}/{TOPIC_PREFIX}#" if self.group else f"{TOPIC_PREFIX}#"

    @property
    def former_subscription(self) -> str | None:
        """The plain subscription this persistent session may hold from a run without a group: with the
        shared one it would deliver each message twice."""
        return f"{TOPIC_PREFIX}#" if self.group else None

    async def run(self) -> None:
        """Consumes until cancelled, reconnecting when the broker goes away."""
        while True:
            try:
                await self._consume()
            except aiomqtt.MqttError as exc:
                self.connected.clear()
                metrics.MQTT_CONNECTED.set(0)
                log.warning("mqtt: %s; reconnecting in %.0f s", exc, self.reconnect_s)
                await asyncio.sleep(self.reconnect_s)

    async def _consume(self) -> None:
        # The incoming queue is unbounded: aiomqtt drops a message that finds its queue full, and a
        # dropped message is never acknowledged, so it holds one of the broker's in-flight slots until
        # the next reconnect. The broker's in-flight window bounds it (Mosquitto max_inflight_messages),
        # though Mosquitto 2.0.11 was seen sending over ten times its window to a fast publisher's
        # subscriber (bench.mqtt): with a bounded queue, ingest stalled with most messages dropped.
        client = aiomqtt.Client(identifier=self.client_id, clean_session=False, keepalive=30,
                                max_queued_incoming_messages=0, **self.params)  # type: ignore[arg-type]
        client._client.manual_ack_set(True)  # noqa: SLF001 - see the module docstring
        acks: asyncio.Queue[tuple[int, int, Pending]] = asyncio.Queue(self.max_inflight)
        async with client:
            if self.former_subscription:
                await client.unsubscribe(self.former_subscription)
            await client.subscribe(self.subscription, qos=1)
            self.connected.set()
            metrics.MQTT_CONNECTED.set(1)
            log.info("mqtt: subscribed to %s as %s", self.subscription, self.client_id)
            acker = asyncio.create_task(self._acker(client, acks))
            messages, queued = client.messages, client._queue  # noqa: SLF001
            try:
                while True:
                    # What is queued already is taken as is: aiomqtt's iterator makes a task and an
                    # asyncio.wait per message (a fifth of this loop's time under load, bench.mqtt);
                    # an empty queue waits through it, which also ends at a disconnection.
                    message = queued.get_nowait() if len(messages) else await anext(messages)
                    self.received += 1
                    pending = await self._process(str(message.topic), bytes(message.payload))
                    await acks.put((message.mid, message.qos, pending))
            finally:
                acker.cancel()

    async def _acker(self, client: aiomqtt.Client, acks: asyncio.Queue[tuple[int, int, Pending]]) -> None:
        while True:
            mid, qos, pending = await acks.get()
            # Acknowledge everything but what could not be made durable: a refused message (bad frame,
            # unknown device, wrong identity; counted and recorded) would otherwise hold one of the
            # broker's in-flight slots for ever and, once they are all taken, stop MQTT ingestion.
            if await pending.accepted() or not pending.retry:
                if qos > 0:
                    client._client.ack(mid, qos)  # noqa: SLF001
                self.acked += 1
            else:
                log.info("mqtt: message %s not acknowledged (%s); the broker will redeliver it", mid, pending.refused)

    async def _process(self, topic: str, payload: bytes) -> Pending:
        parts = topic.split("/")
        if len(parts) != 4 or topic[: len(TOPIC_PREFIX)] != TOPIC_PREFIX or parts[2] not in ALL_NAMES or not parts[3]:
            metrics.REFUSED.labels("mqtt", "topic").inc()
            log.warning("mqtt: ignoring message on %s (expected %s<protocol>/<device>)", topic, TOPIC_PREFIX)
            return Pending(reply=None, refused="decode error: bad topic")
        protocol: Protocol = get(parts[2])
        device = parts[3]
        key = (protocol.name, device)
        session = self.sessions.get(key)
        if session is None:
            # The topic is the identity: the session is bound to it from the start.
            session = self.sessions[key] = Session(transport="mqtt", remote=topic, device=device,
                                                   state={"_bound_device": device})
        return await self.intake.frame(protocol, session, payload)
