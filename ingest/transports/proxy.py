"""PROXY protocol (v1 text and v2 binary) headers, as an L4 load balancer (HAProxy
``send-proxy`` / ``send-proxy-v2``) puts them before a device's bytes, so the ingestor still
sees each device's own address (per-source limits, unknown-device records, logs).

Layout (haproxy.org/download/2.9/doc/proxy-protocol.txt):
  v1: ``PROXY TCP4|TCP6|UNKNOWN <src> <dst> <sport> <dport>\\r\\n`` (at most 107 bytes)
  v2: 12-byte signature, ver/cmd, family/proto, u16 length, then the addresses
      (IPv4: 4+4+2+2 bytes, IPv6: 16+16+2+2); command LOCAL (health checks) carries none.
"""

from __future__ import annotations

import ipaddress
import struct

from ingest.protocols import FrameError

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX = 107


def parse_proxy_header(data: bytes) -> tuple[tuple[str, int] | None, int] | None:
    """``None`` when more bytes are needed; else ``(source address or None, bytes consumed)``.

    The address is None for LOCAL / UNKNOWN (the balancer's own health checks).
    Raises FrameError when the bytes are not a PROXY header."""
    if data[:12] == V2_SIGNATURE[: len(data[:12])] and len(data) < 16:
        return None
    if data.startswith(V2_SIGNATURE):
        return _v2(data)
    if data[:6] == b"PROXY "[: len(data[:6])] and len(data) < 6:
        return None
    if data.startswith(b"PROXY "):
        return _v1(data)
    raise FrameError("proxy", "connection did not start with a PROXY protocol header", data[:32])


def _v1(data: bytes) -> tuple[tuple[str, int] | None, int] | None:
    end = data.find(b"\r\n", 0, V1_MAX + 1)
    if end < 0:
        if len(data) > V1_MAX:
            raise FrameError("proxy", "PROXY v1 header longer than 107 bytes", data[:32])
        return None
    parts = data[:end].decode("ascii", "replace").split(" ")
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        return None, end + 2
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise FrameError("proxy", "malformed PROXY v1 header", data[:end])
    try:
        address = ipaddress.ip_address(parts[2])
        port = int(parts[4])
    except ValueError:
        raise FrameError("proxy", "malformed PROXY v1 address", data[:end]) from None
    if not 0 <= port <= 65535:
        raise FrameError("proxy", "PROXY v1 port out of range", data[:end])
    return (str(address), port), end + 2


def _v2(data: bytes) -> tuple[tuple[str, int] | None, int] | None:
    version_command, family, length = struct.unpack_from(">BBH", data, 12)
    if version_command >> 4 != 2:
        raise FrameError("proxy", "PROXY v2 header with an unknown version", data[:16])
    if len(data) < 16 + length:
        return None
    consumed = 16 + length
    command = version_command & 0x0F
    if command == 0:  # LOCAL
        return None, consumed
    if command != 1:
        raise FrameError("proxy", "PROXY v2 header with an unknown command", data[:16])
    body = data[16:consumed]
    if family >> 4 == 1 and length >= 12:  # AF_INET
        return (str(ipaddress.IPv4Address(body[:4])), struct.unpack_from(">H", body, 8)[0]), consumed
    if family >> 4 == 2 and length >= 36:  # AF_INET6
        return (str(ipaddress.IPv6Address(body[:16])), struct.unpack_from(">H", body, 32)[0]), consumed
    return None, consumed  # AF_UNSPEC / AF_UNIX: no usable address
