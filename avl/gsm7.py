"""The GSM 03.38 default alphabet: what ``data_coding`` 0 means to an SMSC whose default is
GSM, as unpacked septets (one octet each; extension characters escaped with 0x1B). Used by
the SMPP link and by the simulated handsets, so both sides of a test speak the same text.
"""

from __future__ import annotations

# Indexed by septet (0x1B is the escape to the extension table).
BASIC = ("@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
         "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà")
EXTENSION = {"\f": 0x0A, "^": 0x14, "{": 0x28, "}": 0x29, "\\": 0x2F, "[": 0x3C, "~": 0x3D, "]": 0x3E,
             "|": 0x40, "€": 0x65}
ENCODE = {ch: bytes((i,)) for i, ch in enumerate(BASIC) if i != 0x1B} | {
    ch: bytes((0x1B, code)) for ch, code in EXTENSION.items()}
_DECODE_EXTENSION = {code: ch for ch, code in EXTENSION.items()}


def representable(text: str) -> bool:
    """Whether every character of ``text`` is in the GSM default alphabet (or its extension)."""
    return all(ch in ENCODE for ch in text)


def encode(text: str) -> bytes:
    """``text`` as unpacked septets; raises ValueError naming the first character outside GSM 03.38."""
    try:
        return b"".join(ENCODE[ch] for ch in text)
    except KeyError as exc:
        raise ValueError(f"character {exc.args[0]!r} is not in the GSM 03.38 alphabet") from None


def decode(septets: bytes) -> str:
    """Unpacked GSM 03.38 septets to text."""
    out: list[str] = []
    escaped = False
    for septet in septets:
        if escaped:
            out.append(_DECODE_EXTENSION.get(septet, BASIC[septet] if septet != 0x1B else " "))
            escaped = False
        elif septet == 0x1B:
            escaped = True
        else:
            out.append(BASIC[septet & 0x7F])
    return "".join(out)
