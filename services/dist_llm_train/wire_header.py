"""The fixed header of every data-plane message (see wire.py), apart so that `ps --health` can PING the PS
without importing torch: in the image that import costs 2-3 s of CPU, and compose runs the check every 2 s."""

from __future__ import annotations

import struct
from enum import IntEnum

MAGIC = b"DLTW"
WIRE_VERSION = 2  # 2: PUSH asks for its downlink codec and reports its link; ACK says how long the PS held it
HEADER = struct.Struct("!4sBBBBBxHQQ")  # magic, wire version, type, flags, codec, arrays, (pad), body length, session, version


class MsgType(IntEnum):
    HELLO = 1
    WELCOME = 2
    PULL = 3
    PARAMS = 4
    PUSH = 5
    ACK = 6
    ERROR = 7
    PING = 8
    PONG = 9
    BYE = 10


def ping() -> bytes:
    """A whole PING message (one frame)."""
    return HEADER.pack(MAGIC, WIRE_VERSION, MsgType.PING, 0, 0, 0, 0, 0, 0)


def pong_version(frame: bytes) -> int | None:
    """The PS version a PONG reports; None if `frame` does not start like a PONG of this wire version."""
    if len(frame) < HEADER.size:
        return None
    magic, version, kind, *_, ps_version = HEADER.unpack_from(frame)
    return ps_version if (magic, version, kind) == (MAGIC, WIRE_VERSION, MsgType.PONG) else None
