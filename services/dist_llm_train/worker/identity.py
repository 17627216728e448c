"""Which worker am I: the compose container number, learned from Docker's embedded DNS.

Compose names a scaled service's containers `<project>-worker-<n>`, n = 1, 2, ...; Docker's
embedded DNS server (127.0.0.11 inside every container on a user-defined network) answers a
reverse (PTR) query for the container's own address with `<project>-worker-<n>.<network>`.
The worker index is n - 1: the entry of the per-worker config lists (speed, capacity, memory)
it takes, and the same number the netem sidecar reads from the container's labels, so a
worker's compute speed and its WAN link always agree.

`/etc/hosts` maps the container's address to its container id, so `gethostbyaddr` would not
give the name: the query is sent to 127.0.0.11 directly (a few dozen lines of DNS wire format).
Local runs, with no Docker DNS, pass `--index` (or WORKER_INDEX).
"""

from __future__ import annotations

import re
import secrets
import socket
import struct

DOCKER_DNS = ("127.0.0.11", 53)
PTR, IN = 12, 1
CONTAINER_NAME = re.compile(r"(?P<project>.+)-worker-(?P<number>\d+)")


class IdentityError(Exception):
    """Neither --index/WORKER_INDEX nor Docker's DNS told the worker who it is."""


def resolve(index: int | None) -> tuple[str, int]:
    """(worker name, index): from `index` if given (a local run), else from Docker's DNS."""
    if index is not None:
        if index < 0:
            raise IdentityError(f"--index must be 0 or more, got {index}")
        return f"local-worker-{index}", index
    address = own_address()
    try:
        name = reverse_lookup(address)
    except (OSError, ValueError) as exc:
        raise IdentityError(
            f"cannot learn the worker index: no --index/WORKER_INDEX given, and the reverse lookup of "
            f"{address} at Docker's DNS {DOCKER_DNS[0]} failed ({exc}); outside compose pass --index"
        ) from None
    return index_from_name(name)


def index_from_name(ptr_name: str) -> tuple[str, int]:
    """`dlt-worker-3.dlt_wan.` -> ('dlt-worker-3', 2)."""
    container = ptr_name.split(".", 1)[0]
    match = CONTAINER_NAME.fullmatch(container)
    if not match or int(match["number"]) < 1:
        raise IdentityError(f"container name {container!r} (from DNS {ptr_name!r}) is not <project>-worker-<n>")
    return container, int(match["number"]) - 1


def own_address() -> str:
    # Docker writes the container's own address under its hostname in /etc/hosts.
    return socket.gethostbyname(socket.gethostname())


def reverse_lookup(address: str, server: tuple[str, int] = DOCKER_DNS, timeout_s: float = 2.0) -> str:
    """The PTR name of an IPv4 address, asked of one DNS server over UDP."""
    query_id = secrets.randbits(16)
    qname = ".".join(reversed(address.split("."))) + ".in-addr.arpa"
    query = struct.pack("!HHHHHH", query_id, 0x0100, 1, 0, 0, 0) + encode_name(qname) + struct.pack("!HH", PTR, IN)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout_s)
        sock.sendto(query, server)
        answer, _ = sock.recvfrom(4096)
    return parse_ptr_answer(answer, query_id)


def encode_name(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        raw = label.encode("ascii")
        out += bytes([len(raw)]) + raw
    return out + b"\0"


def parse_ptr_answer(packet: bytes, query_id: int) -> str:
    """The first PTR record of a DNS answer; ValueError for anything else."""
    if len(packet) < 12:
        raise ValueError("short DNS answer")
    ident, flags, questions, answers = struct.unpack("!HHHH", packet[:8])
    if ident != query_id:
        raise ValueError("DNS answer to another query")
    if flags & 0x000F:
        raise ValueError(f"DNS error code {flags & 0x000F}")
    offset = 12
    for _ in range(questions):
        _, offset = read_name(packet, offset)
        offset += 4  # type, class
    for _ in range(answers):
        _, offset = read_name(packet, offset)
        rtype, _, _, length = struct.unpack("!HHIH", packet[offset:offset + 10])
        offset += 10
        if rtype == PTR:
            return read_name(packet, offset)[0]
        offset += length
    raise ValueError("no PTR record in the DNS answer")


def read_name(packet: bytes, offset: int) -> tuple[str, int]:
    """A possibly compressed name at `offset`; returns (name, offset after it)."""
    labels: list[str] = []
    end = None
    for _ in range(128):  # bounds a malicious pointer loop
        if offset >= len(packet):
            raise ValueError("DNS name runs past the packet")
        length = packet[offset]
        if length & 0xC0 == 0xC0:
            if end is None:
                end = offset + 2
            offset = struct.unpack("!H", packet[offset:offset + 2])[0] & 0x3FFF
            continue
        if length == 0:
            return ".".join(labels), (end if end is not None else offset + 1)
        labels.append(packet[offset + 1:offset + 1 + length].decode("ascii", "replace"))
        offset += 1 + length
    raise ValueError("DNS name too long or looping")
