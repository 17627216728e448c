"""The kernel's nfnetlink_queue, spoken directly over an AF_NETLINK socket (standard library only).

An iptables `NFQUEUE --queue-num N` rule hands each matching packet to the process bound to queue
N; the packet waits in the kernel until that process sends a verdict (accept or drop) for its id.
We ask for metadata only (NFQNL_COPY_META: packet id, hook, device; never the payload), so a 64 KB
GSO packet costs one ~100-byte message. Why this binding and not a packaged one: see DESIGN.md,
"The userspace delayer" (PyPI NetfilterQueue cannot set NFQA_CFG_F_GSO).

Failure looks like this: setup errors (no CAP_NET_ADMIN, queue already bound by another process)
raise OSError from `Queue(...)`; a full socket buffer makes the kernel drop the packet (counted in
/proc/net/netfilter/nfnetlink_queue as user_dropped) and report ENOBUFS on our next receive, which
`Queue.receive` counts in `enobufs` and survives. NFQA_CFG_F_FAIL_OPEN is never set: it lets
overflowing packets skip the queue, i.e. skip the delay, silently.
"""

from __future__ import annotations

import errno
import functools
import socket
import struct
from dataclasses import dataclass
from typing import NamedTuple

NETLINK_NETFILTER = 12
SO_RCVBUFFORCE = 33  # not exported by the socket module; needs CAP_NET_ADMIN, ignores rmem_max
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLMSG_ERROR = 2
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG, NFQNL_MSG_VERDICT_BATCH = 0, 1, 2, 3
CMD_BIND, CMD_UNBIND = 1, 2  # NFQNL_CFG_CMD_*
COPY_META = 1  # NFQNL_COPY_META
# config attributes (NFQA_CFG_*)
CFG_CMD, CFG_PARAMS, CFG_QUEUE_MAXLEN, CFG_MASK, CFG_FLAGS = 1, 2, 3, 4, 5
CFG_F_GSO = 0x4  # NFQA_CFG_F_GSO: hand over GSO packets whole instead of segmenting them
# packet attributes (NFQA_*)
NFQA_PACKET_HDR, NFQA_VERDICT_HDR, NFQA_TIMESTAMP, NFQA_CAP_LEN, NFQA_SKB_INFO = 1, 2, 4, 13, 14
SKB_GSO = 0x2  # NFQA_SKB_GSO bit of NFQA_SKB_INFO
NF_DROP, NF_ACCEPT = 0, 1
PROC_PATH = "/proc/net/netfilter/nfnetlink_queue"

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid (host order)
_NFGENMSG = struct.Struct("!BBH")  # family, version, res_id (the queue number, network order)
_NLATTR = struct.Struct("=HH")  # len, type
_BE32 = struct.Struct("!I")
_BE32x2 = struct.Struct("!II")
_BE64x2 = struct.Struct("!QQ")
_ERRNO = struct.Struct("=i")
_HEADERS = _NLMSGHDR.size + _NFGENMSG.size
_PACKET_MSG = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET


class Packet(NamedTuple):  # a tuple: built once per packet in the hot loop, cheaper than a dataclass
    id: int  # the kernel's packet id; verdicts name it
    length: int | None  # bytes of the packet; the kernel sends it (NFQA_CAP_LEN) only when it
    # copied part of the payload, so never in our metadata-only mode
    timestamp: float | None  # kernel receive time (CLOCK_REALTIME seconds), when the skb has one
    gso: bool  # a GSO aggregate of several segments (only reported with the GSO flag on)


@dataclass(frozen=True, slots=True)
class QueueCounters:
    """One line of /proc/net/netfilter/nfnetlink_queue (counters of this network namespace)."""

    queue_num: int
    queue_total: int  # packets waiting for a verdict now
    queue_dropped: int  # dropped because the queue was full (queue_maxlen)
    user_dropped: int  # dropped because our socket buffer was full (ENOBUFS)
    id_sequence: int  # id of the last packet queued


def _attr(kind: int, payload: bytes) -> bytes:
    size = _NLATTR.size + len(payload)
    return _NLATTR.pack(size, kind) + payload + b"\0" * (-size % 4)


def message(msg: int, queue_num: int, attrs: bytes, flags: int = NLM_F_REQUEST, seq: int = 0) -> bytes:
    """One netlink message of the queue subsystem: nlmsghdr + nfgenmsg + attributes."""
    size = _HEADERS + len(attrs)
    header = _NLMSGHDR.pack(size, (NFNL_SUBSYS_QUEUE << 8) | msg, flags, seq, 0)
    return header + _NFGENMSG.pack(socket.AF_UNSPEC, 0, queue_num) + attrs


def config_cmd(queue_num: int, command: int, seq: int) -> bytes:
    body = struct.pack("!BxH", command, socket.AF_INET)  # the family is ignored by kernels >= 3.8
    return message(NFQNL_MSG_CONFIG, queue_num, _attr(CFG_CMD, body), NLM_F_REQUEST | NLM_F_ACK, seq)


def config_queue(queue_num: int, seq: int, maxlen: int, gso: bool) -> bytes:
    """Copy metadata only, queue at most `maxlen` packets, GSO flag on or off (other flags off)."""
    attrs = (
        _attr(CFG_PARAMS, struct.pack("!IB", 0, COPY_META))
        + _attr(CFG_QUEUE_MAXLEN, _BE32.pack(maxlen))
        + _attr(CFG_FLAGS, _BE32.pack(CFG_F_GSO if gso else 0))
        + _attr(CFG_MASK, _BE32.pack(0xFFFFFFFF))  # every flag we do not set is cleared: no FAIL_OPEN
    )
    return message(NFQNL_MSG_CONFIG, queue_num, attrs, NLM_F_REQUEST | NLM_F_ACK, seq)


def verdict(queue_num: int, packet_id: int, decision: int, batch: bool = False) -> bytes:
    """A verdict on one packet, or with `batch` on every queued packet whose id is <= packet_id."""
    return _verdict_headers(queue_num, batch) + _BE32x2.pack(decision, packet_id)


@functools.cache
def _verdict_headers(queue_num: int, batch: bool) -> bytes:
    # Everything but the last 8 bytes (verdict, id) is the same for every verdict of a queue:
    # built once, since the release loop sends one verdict per wake-up.
    kind = NFQNL_MSG_VERDICT_BATCH if batch else NFQNL_MSG_VERDICT
    return message(kind, queue_num, _attr(NFQA_VERDICT_HDR, bytes(8)))[:-8]


def parse(buf: bytes | memoryview, end: int) -> tuple[list[Packet], list[tuple[int, int]]]:
    """Decode the netlink messages in buf[:end]: queued packets, and (seq, errno) of every
    NLMSG_ERROR (errno 0 is an acknowledgement). Raises ValueError on a malformed message."""
    packets: list[Packet] = []
    errors: list[tuple[int, int]] = []
    header = _NLMSGHDR.unpack_from
    offset = 0
    while offset + _NLMSGHDR.size <= end:
        size, kind, _flags, seq, _pid = header(buf, offset)
        if size < _NLMSGHDR.size or offset + size > end:
            raise ValueError(f"netlink message of length {size} at offset {offset} overruns {end} bytes")
        if kind == _PACKET_MSG:
            packets.append(_parse_packet(buf, offset + _HEADERS, offset + size))
        elif kind == NLMSG_ERROR:
            errors.append((seq, -_ERRNO.unpack_from(buf, offset + _NLMSGHDR.size)[0]))
        offset += (size + 3) & ~3
    return packets, errors


def _parse_packet(buf: bytes | memoryview, offset: int, end: int) -> Packet:
    packet_id = length = timestamp = None
    gso = False
    attr, be32 = _NLATTR.unpack_from, _BE32.unpack_from
    while offset + 4 <= end:
        size, kind = attr(buf, offset)
        if size < 4 or offset + size > end:
            raise ValueError(f"netlink attribute of length {size} at offset {offset} overruns its message")
        kind &= 0x3FFF  # strip NLA_F_NESTED / NLA_F_NET_BYTEORDER
        if kind == NFQA_PACKET_HDR:
            packet_id = be32(buf, offset + 4)[0]
        elif kind == NFQA_TIMESTAMP:
            sec, usec = _BE64x2.unpack_from(buf, offset + 4)
            timestamp = sec + usec * 1e-6
        elif kind == NFQA_CAP_LEN:
            length = be32(buf, offset + 4)[0]
        elif kind == NFQA_SKB_INFO:
            gso = bool(be32(buf, offset + 4)[0] & SKB_GSO)
        offset += (size + 3) & ~3
    if packet_id is None:
        raise ValueError("queued-packet message without NFQA_PACKET_HDR")
    return Packet(packet_id, length, timestamp, gso)


def read_counters(queue_num: int, path: str = PROC_PATH) -> QueueCounters | None:
    """This namespace's counters for the queue, or None when no process is bound to it."""
    with open(path) as f:
        for line in f:
            fields = [int(x) for x in line.split()]
            if fields[0] == queue_num:
                return QueueCounters(fields[0], fields[2], fields[5], fields[6], fields[7])
    return None


class Queue:
    """A bound queue. Not thread-safe: one loop owns it."""

    def __init__(self, queue_num: int, maxlen: int, gso: bool, rcvbuf: int = 64 << 20, bufsize: int = 4 << 20):
        self.queue_num = queue_num
        self.enobufs = 0  # receive-buffer overflows reported by the kernel (each lost >= 1 packet)
        self.refused = 0  # verdicts the kernel refused: the packet was already gone (device down)
        self._seq = 0
        self._held: list[Packet] = []  # packets that arrived while we waited for an ack
        self._buf = bytearray(bufsize)
        self._view = memoryview(self._buf)
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
            self.sock.bind((0, 0))
            self._request(config_cmd(queue_num, CMD_BIND, self._next_seq()), "bind")
            self.configure(maxlen, gso)
        except BaseException:
            self.sock.close()
            raise

    def fileno(self) -> int:
        return self.sock.fileno()

    def configure(self, maxlen: int, gso: bool) -> None:
        self._request(config_queue(self.queue_num, self._next_seq(), maxlen, gso), "config")

    def receive(self) -> list[Packet]:
        """Every packet waiting in the socket now (non-blocking; [] when none). The kernel sends
        each packet's message as its own datagram, so this calls recv_into at growing offsets of
        one large buffer until the socket is empty, then parses them all in one pass."""
        packets, self._held = self._held, []
        end = 0
        limit = len(self._buf) - 65536  # room for one more message
        while end < limit:
            try:
                n = self.sock.recv_into(self._view[end:], 0, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise
                self.enobufs += 1
                continue
            end += (n + 3) & ~3
        got, errors = parse(self._view, end)
        packets.extend(got)
        # A refused verdict (ENOENT) means the kernel flushed the packet itself, e.g. when its
        # device went down; counted, not fatal, since the rest of the queue is still ours.
        self.refused += sum(1 for _seq, err in errors if err)
        return packets

    def send(self, messages: bytes) -> None:
        """Send one or more concatenated verdict messages in a single datagram."""
        self.sock.send(messages)

    def close(self) -> None:
        try:
            self._request(config_cmd(self.queue_num, CMD_UNBIND, self._next_seq()), "unbind")
        finally:
            self.sock.close()

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _request(self, msg: bytes, what: str) -> None:
        seq = _NLMSGHDR.unpack_from(msg)[3]
        self.sock.send(msg)
        self.sock.settimeout(2.0)
        try:
            while True:
                try:
                    n = self.sock.recv_into(self._buf)
                except TimeoutError:
                    raise OSError(errno.ETIMEDOUT, f"nfqueue {self.queue_num} {what}: no answer from the kernel") from None
                except OSError as e:
                    if e.errno != errno.ENOBUFS:
                        raise
                    self.enobufs += 1
                    continue
                packets, errors = parse(self._view, n)
                self._held.extend(packets)
                for got_seq, err in errors:
                    if got_seq == seq and err:
                        raise OSError(err, f"nfqueue {self.queue_num} {what}: {errno.errorcode.get(err, err)}")
                    if got_seq == seq:
                        return
                    self.refused += bool(err)  # a verdict's error met on the way
        finally:
            self.sock.settimeout(None)
