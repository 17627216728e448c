"""The data plane's messages on ZeroMQ (worker DEALER <-> PS ROUTER): typed frames, raw tensor bytes, no pickle.

A message is one multipart ZeroMQ message:

    frame 0   header      HEADER (28 bytes, network byte order; wire_header.py)
                          magic "DLTW", wire version, type, flags, codec, array count, body length,
                          session, version
              descriptors one DESCRIPTOR (10 bytes) per array: name code, dtype code, length in elements
              body        the type's fixed fields (BODIES), then its text (UTF-8), if any
    frame 1.. arrays      one raw frame per array, native little-endian, in the order of codecs.LAYOUT[codec]

| type    | from   | fields                                                  | arrays                      |
|---------|--------|---------------------------------------------------------|-----------------------------|
| HELLO   | worker | index; token, name (text)                               | -                           |
| WELCOME | PS     | session; numel, model digest, config digest; STOP       | -                           |
| PULL    | worker | session                                                 | -                           |
| PARAMS  | PS     | version; DELTA, STOP                                    | parameters (dense or delta) |
| PUSH    | worker | session, base version; train loss, compute s, samples;  | the update, in its codec    |
|         |        | downlink codec and ratio asked for; link Mbit/s, RTT ms |                             |
| ACK     | PS     | version now, staleness, held s; ACCEPTED, DELTA, STOP   | the worker's new parameters |
| ERROR   | both   | code; text (a worker sends only training_failed)        | -                           |
| PING    | anyone | -                                                       | -                           |
| PONG    | PS     | version; updates accepted, rejected, errors             | -                           |
| BYE     | worker | session                                                 | -                           |

Parameters travel dense (codec `none`, DELTA clear) or as a delta against the replica the receiver holds
(DELTA set, the run's codec, or under compression.policy adaptive the codec and ratio the worker asked for in
its PUSH); `apply_parameters` is the one function both ends use to take them, so the PS's copy of a worker's
replica and the worker's own stay bit-identical. A PUSH's link Mbit/s and RTT ms are 0 when the worker has not
measured them (policy fixed); an ACK's held s is how long the PS held the PUSH before answering (its handling,
a sync round's wait), which the worker subtracts when it measures its link (ml/adaptive.py).

`decode` trusts nothing: it checks the total size first (before any length inside the message is believed),
then magic, wire version, type, that frame 0 is exactly header + descriptors + body, that the descriptors
match the frames and the codec's LAYOUT (names, dtypes, byte counts), the text (UTF-8, lengths), the numbers
(finite losses, flags the type may carry), and finally the arrays with their codec's `check` (ml/codecs.py:
lengths for the model's size, NaN / Inf, value ranges such as top-k's indices). Any failure raises `WireError`
with a code from ERROR_CODES, which the PS sends back in an ERROR and counts. The wire names no codec: it asks
the codec object (`ml.codecs.make`) to check a payload and to add a delta into parameters (`apply_parameters`).

Bytes per message for the default model (d = 938,240; framing = frame 0 + ZeroMQ's frame headers):

| message                   | payload    | framing | total      |
|---------------------------|------------|---------|------------|
| PUSH dense fp32           | 3,752,960  | 94      | 3,753,054  |
| PUSH top-k 1 % (k = 9382) | 56,292     | 113     | 56,405     |
| ACK dense fp32            | 3,752,960  | 61      | 3,753,021  |

The arrays of a decoded message are views of the received frames (no copy): read them, never write them.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import zmq
from torch import Tensor

from .config import RunConfig
from .wire_header import HEADER, MAGIC, WIRE_VERSION, MsgType
from .ml.codecs import DENSE, LAYOUT, Encoded, NonFinite, add_into, decode as decode_update, make

DESCRIPTOR = struct.Struct("!BBQ")  # array name code, dtype code, length in elements
MAX_ARRAYS = max(len(layout) for layout in LAYOUT.values())
MAX_FRAMES = 1 + MAX_ARRAYS  # frame 0 and one frame per array: no message of the protocol has more
MAX_TOKEN_BYTES, MAX_NAME_BYTES, MAX_TEXT_BYTES = 256, 128, 2048

ACCEPTED, STOP, DELTA = 1, 2, 4  # flag bits

# Codes on the wire, from LAYOUT (a registry in config names): codec, array name, dtype.
CODECS: tuple[str, ...] = tuple(LAYOUT)
ARRAY_NAMES: tuple[str, ...] = tuple(dict.fromkeys(name for layout in LAYOUT.values() for name, _ in layout))
DTYPES: tuple[torch.dtype, ...] = tuple(dict.fromkeys(dtype for layout in LAYOUT.values() for _, dtype in layout))
NUMPY_DTYPES = {torch.float32: np.float32, torch.float16: np.float16, torch.int8: np.int8, torch.int32: np.int32}
if set(NUMPY_DTYPES) != set(DTYPES):
    raise ImportError(f"wire.NUMPY_DTYPES {list(NUMPY_DTYPES)} do not cover the LAYOUT dtypes {list(DTYPES)}")

ERROR_CODES: dict[str, int] = {
    # the message itself (wire.decode)
    "oversize": 1,  # frames add up to more than ml.max_message_mb
    "truncated": 2,  # frame 0 shorter than its header says
    "bad_magic": 3,
    "bad_wire_version": 4,
    "unknown_type": 5,
    "bad_descriptor": 6,  # descriptors vs frames vs the codec's LAYOUT
    "bad_array": 7,  # dtype, length or content (indices) wrong for the model
    "non_finite": 8,  # NaN or Inf in an array or a number
    "malformed": 9,  # body size, flags, text, numbers out of range
    # the protocol (the PS's answers)
    "unexpected_type": 10,  # a message the PS never takes (WELCOME, ACK, ...)
    "unknown_session": 11,  # the PS does not know this session (restarted, or never said HELLO): HELLO again
    "bad_token": 12,
    "bad_version": 13,  # an update computed from a version the PS has not produced
    "wrong_codec": 14,  # an update not in the run's codec; a downlink codec the run does not allow
    "session_mismatch": 15,  # a session used from another connection than the one that opened it
    "server_error": 16,  # the PS could not handle a valid message (logged with the traceback)
    # a worker's report (worker -> PS): its own training cannot go on; the PS ends the run failed with the text
    "training_failed": 17,
    # the connection (ps/server.py): frames of one message past MAX_FRAMES; a key no longer admitted; a HELLO
    # under another name than the one the connection's key was registered for
    "too_many_frames": 18,
    "not_admitted": 19,
    "wrong_identity": 20,
}
ERROR_NAMES = {number: name for name, number in ERROR_CODES.items()}


class WireError(ValueError):
    """A message refused; `code` is a key of ERROR_CODES, `detail` says what was wrong (safe to send back)."""

    def __init__(self, code: str, detail: str):
        if code not in ERROR_CODES:
            raise KeyError(f"unknown wire error code {code!r}")
        super().__init__(f"{code}: {detail}")
        self.code, self.detail = code, detail


@dataclass(frozen=True)
class Hello:
    token: str
    name: str
    index: int


@dataclass(frozen=True)
class Welcome:
    session: int
    numel: int
    model_digest: bytes  # 32 bytes, `model_digest`
    config_digest: bytes  # 32 bytes, `config_digest`
    stop: bool = False


@dataclass(frozen=True)
class Pull:
    session: int


@dataclass(frozen=True)
class Params:
    version: int
    payload: Encoded  # codec none and delta False: the parameters; else a delta against the receiver's replica
    delta: bool
    stop: bool = False


@dataclass(frozen=True)
class Push:
    session: int
    base_version: int  # the version of the parameters the update was computed from
    update: Encoded
    train_loss: float  # mean training loss of the batches behind the update, nats/byte
    compute_s: float  # seconds the worker computed for it
    samples: int  # sequences it saw
    down_codec: str = DENSE  # the codec the worker asks for on its downlink (policy adaptive; fixed: ignored)
    down_ratio: float = 1.0  # ... and its ratio (topk), in (0, 1]
    link_mbit: float = 0.0  # the link rate the worker measured, 0 = not measured
    rtt_ms: float = 0.0  # the RTT it measured, 0 = not measured


@dataclass(frozen=True)
class Ack:
    version: int  # the PS's version now: what `payload` brings the worker to
    accepted: bool
    staleness: int
    payload: Encoded
    delta: bool
    stop: bool = False
    held_s: float = 0.0  # how long the PS held the PUSH before this answer


@dataclass(frozen=True)
class Error:
    code: str
    text: str


@dataclass(frozen=True)
class Ping:
    pass


@dataclass(frozen=True)
class Pong:
    version: int
    accepted: int
    rejected: int
    errors: int


@dataclass(frozen=True)
class Bye:
    session: int


Message = Hello | Welcome | Pull | Params | Push | Ack | Error | Ping | Pong | Bye

# type -> (class, fixed body fields after the header, flags the type may carry, carries arrays)
BODIES: dict[MsgType, tuple[type, struct.Struct, int, bool]] = {
    MsgType.HELLO: (Hello, struct.Struct("!IHH"), 0, False),  # index, token bytes, name bytes (text follows)
    MsgType.WELCOME: (Welcome, struct.Struct("!Q32s32s"), STOP, False),  # numel, model digest, config digest
    MsgType.PULL: (Pull, struct.Struct(""), 0, False),
    MsgType.PARAMS: (Params, struct.Struct(""), DELTA | STOP, True),
    # train loss, compute s, samples, downlink codec code, downlink ratio, link Mbit/s, RTT ms
    MsgType.PUSH: (Push, struct.Struct("!ddIBddd"), 0, True),
    MsgType.ACK: (Ack, struct.Struct("!Id"), ACCEPTED | DELTA | STOP, True),  # staleness, held s
    MsgType.ERROR: (Error, struct.Struct("!H"), 0, False),  # code (text follows)
    MsgType.PING: (Ping, struct.Struct(""), 0, False),
    MsgType.PONG: (Pong, struct.Struct("!QQQ"), 0, False),  # accepted, rejected, errors
    MsgType.BYE: (Bye, struct.Struct(""), 0, False),
}
TYPE_OF: dict[type, MsgType] = {cls: kind for kind, (cls, *_rest) in BODIES.items()}
if set(BODIES) != set(MsgType):
    raise ImportError("wire.BODIES does not cover every MsgType")


def model_digest(config: RunConfig, numel: int) -> bytes:
    """What WELCOME says about the model: architecture, sizes, seed, parameter count."""
    blob = {"model": config.ml.model.model_dump(mode="json"), "seed": config.seed, "numel": numel}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).digest()


def config_digest(config: RunConfig) -> bytes:
    return hashlib.sha256(json.dumps(config.model_dump(mode="json"), sort_keys=True).encode()).digest()


def flag_bits(**flags: bool) -> int:
    bits = {"accepted": ACCEPTED, "stop": STOP, "delta": DELTA}
    return sum(bits[name] for name, on in flags.items() if on)


def encode(msg: Message) -> list[Any]:
    """The frames of `msg`: bytes for frame 0, the arrays' own memory after it (no copy; do not change a
    tensor until ZeroMQ has sent it). ValueError for a field out of range (a bug in the caller)."""
    kind = TYPE_OF[type(msg)]
    session = version = 0
    flags, text = 0, b""
    payload: Encoded | None = None
    if isinstance(msg, Hello):
        token, name = msg.token.encode(), msg.name.encode()
        body = BODIES[kind][1].pack(msg.index, len(token), len(name))
        text = token + name
    elif isinstance(msg, Welcome):
        session, flags = msg.session, flag_bits(stop=msg.stop)
        body = BODIES[kind][1].pack(msg.numel, msg.model_digest, msg.config_digest)
    elif isinstance(msg, (Pull, Bye)):
        session, body = msg.session, b""
    elif isinstance(msg, Params):
        version, payload, body = msg.version, msg.payload, b""
        flags = flag_bits(delta=msg.delta, stop=msg.stop)
    elif isinstance(msg, Push):
        session, version, payload = msg.session, msg.base_version, msg.update
        body = BODIES[kind][1].pack(msg.train_loss, msg.compute_s, msg.samples, CODECS.index(msg.down_codec),
                                    msg.down_ratio, msg.link_mbit, msg.rtt_ms)
    elif isinstance(msg, Ack):
        version, payload = msg.version, msg.payload
        flags = flag_bits(accepted=msg.accepted, delta=msg.delta, stop=msg.stop)
        body = BODIES[kind][1].pack(min(msg.staleness, 2**32 - 1), msg.held_s)
    elif isinstance(msg, Error):
        body, text = BODIES[kind][1].pack(ERROR_CODES[msg.code]), msg.text.encode()[:MAX_TEXT_BYTES]
    elif isinstance(msg, Pong):
        version, body = msg.version, BODIES[kind][1].pack(msg.accepted, msg.rejected, msg.errors)
    else:  # Ping
        body = b""
    arrays = [] if payload is None else [payload.arrays[name] for name, _ in LAYOUT[payload.codec]]
    codec = 0 if payload is None else CODECS.index(payload.codec)
    head = HEADER.pack(MAGIC, WIRE_VERSION, kind, flags, codec, len(arrays), len(body) + len(text), session, version)
    descriptors = b"".join(DESCRIPTOR.pack(ARRAY_NAMES.index(name), DTYPES.index(a.dtype), a.numel())
                           for (name, _), a in zip(LAYOUT[payload.codec], arrays)) if payload else b""
    return [head + descriptors + body + text, *(memoryview(a.contiguous().numpy()).cast("B") for a in arrays)]


def frame_size(frame: Any) -> int:
    return frame.nbytes if isinstance(frame, memoryview) else len(frame)


def wire_bytes(frames: Sequence[Any]) -> int:
    """Bytes ZeroMQ writes to TCP for these frames: each frame's data plus its ZMTP 3 frame header
    (flags byte and a 1-byte size up to 255 bytes, else 8 bytes). TCP/IP headers are not counted."""
    return sum(n + (2 if n <= 255 else 9) for n in map(frame_size, frames))


def decode(frames: Sequence[Any], *, max_bytes: int, numel: int | None) -> Message:
    """The message in `frames` (bytes, memoryviews or zmq.Frame), checked as the module docstring says.

    `numel` is the model's size, which every array payload must fit; None (a worker before WELCOME) refuses
    any message with arrays. Raises WireError."""
    sizes = [frame_size(f) for f in frames]
    if sum(sizes) > max_bytes:
        raise WireError("oversize", f"message of {sum(sizes)} bytes is above the limit of {max_bytes}")
    if not frames or sizes[0] < HEADER.size:
        raise WireError("truncated", f"frame 0 has {sizes[0] if frames else 0} bytes, a header needs {HEADER.size}")
    head = buffer_of(frames[0])
    magic, wire_version, kind, flags, codec, count, body_len, session, version = HEADER.unpack_from(head)
    if magic != MAGIC:
        raise WireError("bad_magic", f"magic {magic!r}, expected {MAGIC!r}")
    if wire_version != WIRE_VERSION:
        raise WireError("bad_wire_version", f"wire version {wire_version}, this side speaks {WIRE_VERSION}")
    if kind not in BODIES:
        raise WireError("unknown_type", f"message type {kind}")
    kind = MsgType(kind)
    cls, fields, allowed_flags, carries_arrays = BODIES[kind]
    expected = HEADER.size + count * DESCRIPTOR.size + body_len
    if count > MAX_ARRAYS or sizes[0] != expected:
        raise WireError("truncated" if sizes[0] < expected else "malformed",
                        f"frame 0 has {sizes[0]} bytes; its header announces {count} arrays and a {body_len}-byte body")
    if flags & ~allowed_flags:
        raise WireError("malformed", f"{kind.name} cannot carry flags {flags:#x}")
    body = head[HEADER.size + count * DESCRIPTOR.size:]
    has_text = kind in (MsgType.HELLO, MsgType.ERROR)
    if len(body) < fields.size or (len(body) > fields.size and not has_text):
        raise WireError("malformed", f"{kind.name} body has {len(body)} bytes, expected {fields.size}")
    values = fields.unpack_from(body)
    payload = None
    if carries_arrays:
        payload = decode_arrays(frames, sizes, head, count, codec, numel, kind)
    elif count or len(frames) != 1:
        raise WireError("bad_descriptor", f"{kind.name} carries no arrays, got {count} descriptors and {len(frames) - 1} frames")
    text = bytes(body[fields.size:])
    return build(kind, values, text, flags, session, version, payload)


def check_bounds(frames: int, total: int, *, max_frames: int, max_bytes: int) -> None:
    """A message of `frames` frames and `total` bytes so far: WireError as soon as it passes either bound, so a
    receiver can stop keeping it at the frame that broke the bound."""
    if frames > max_frames:
        raise WireError("too_many_frames", f"message of more than {max_frames} frames")
    if total > max_bytes:
        raise WireError("oversize", f"message of more than {max_bytes} bytes (the limit)")


def buffer_of(frame: Any) -> memoryview:
    return memoryview(frame.buffer if isinstance(frame, zmq.Frame) else frame).cast("B")


def decode_arrays(frames: Sequence[Any], sizes: list[int], head: memoryview, count: int, codec: int,
                  numel: int | None, kind: MsgType) -> Encoded:
    if codec >= len(CODECS):
        raise WireError("bad_descriptor", f"unknown codec code {codec}")
    name = CODECS[codec]
    layout = LAYOUT[name]
    if numel is None:
        raise WireError("unexpected_type", f"{kind.name} with arrays before the model's size is known")
    if count != len(layout) or len(frames) != count + 1:
        raise WireError("bad_descriptor", f"codec {name} needs {len(layout)} arrays; header says {count}, "
                                          f"{len(frames) - 1} array frames came")
    arrays = {}
    for i, (array_name, dtype) in enumerate(layout):
        name_code, dtype_code, length = DESCRIPTOR.unpack_from(head, HEADER.size + i * DESCRIPTOR.size)
        got_name = ARRAY_NAMES[name_code] if name_code < len(ARRAY_NAMES) else f"code {name_code}"
        got_dtype = DTYPES[dtype_code] if dtype_code < len(DTYPES) else f"code {dtype_code}"
        if (got_name, got_dtype) != (array_name, dtype):
            raise WireError("bad_descriptor", f"codec {name} array {i} is {got_name} {got_dtype}, expected {array_name} {dtype}")
        itemsize = torch.empty(0, dtype=dtype).element_size()
        if length > numel or length * itemsize != sizes[i + 1]:
            raise WireError("bad_array", f"codec {name} {array_name}: {length} elements in a {sizes[i + 1]}-byte frame "
                                         f"(model size {numel})")
        arrays[array_name] = tensor_view(frames[i + 1], NUMPY_DTYPES[dtype])
    try:
        make(name).check(arrays, numel)
    except ValueError as exc:
        raise WireError("non_finite" if isinstance(exc, NonFinite) else "bad_array", str(exc)) from None
    return Encoded(name, numel, arrays)


def tensor_view(frame: Any, dtype: type) -> Tensor:
    """A 1-D tensor over the frame's memory (no copy); a read-only buffer (bytes) is copied, so that no
    tensor ever claims to own memory it may not write."""
    array = np.frombuffer(buffer_of(frame), dtype=dtype)
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def build(kind: MsgType, values: tuple, text: bytes, flags: int, session: int, version: int,
          payload: Encoded | None) -> Message:
    stop = bool(flags & STOP)
    if kind == MsgType.HELLO:
        index, token_len, name_len = values
        if token_len > MAX_TOKEN_BYTES or name_len > MAX_NAME_BYTES or token_len + name_len != len(text):
            raise WireError("malformed", f"HELLO text of {len(text)} bytes for a {token_len}-byte token and "
                                         f"a {name_len}-byte name (at most {MAX_TOKEN_BYTES} and {MAX_NAME_BYTES})")
        return Hello(utf8(text[:token_len], "token"), utf8(text[token_len:], "name"), index)
    if kind == MsgType.WELCOME:
        return Welcome(session, values[0], values[1], values[2], stop)
    if kind == MsgType.PULL:
        return Pull(session)
    if kind == MsgType.BYE:
        return Bye(session)
    if kind == MsgType.PARAMS:
        return Params(version, parameters_payload(payload, flags), bool(flags & DELTA), stop)
    if kind == MsgType.PUSH:
        train_loss, compute_s, samples, down_code, down_ratio, link_mbit, rtt_ms = values
        numbers = f"PUSH train loss {train_loss}, compute {compute_s} s, link {link_mbit} Mbit/s, RTT {rtt_ms} ms"
        if not all(map(math.isfinite, (train_loss, compute_s, down_ratio, link_mbit, rtt_ms))):
            raise WireError("non_finite", f"{numbers}, downlink ratio {down_ratio}")
        if min(compute_s, train_loss, link_mbit, rtt_ms) < 0:
            raise WireError("malformed", f"{numbers}: negative")
        if down_code >= len(CODECS) or not 0 < down_ratio <= 1:
            raise WireError("malformed", f"PUSH asks for downlink codec code {down_code}, ratio {down_ratio} "
                                         f"(codes 0-{len(CODECS) - 1}, a ratio in (0, 1])")
        return Push(session, version, payload, train_loss, compute_s, samples, CODECS[down_code], down_ratio,
                    link_mbit, rtt_ms)
    if kind == MsgType.ACK:
        staleness_, held_s = values
        if not (math.isfinite(held_s) and held_s >= 0):
            raise WireError("non_finite" if not math.isfinite(held_s) else "malformed", f"ACK held {held_s} s")
        return Ack(version, bool(flags & ACCEPTED), staleness_, parameters_payload(payload, flags),
                   bool(flags & DELTA), stop, held_s)
    if kind == MsgType.ERROR:
        if len(text) > MAX_TEXT_BYTES:
            raise WireError("malformed", f"ERROR text of {len(text)} bytes (at most {MAX_TEXT_BYTES})")
        return Error(ERROR_NAMES.get(values[0], f"code_{values[0]}"), utf8(text, "error text"))
    if kind == MsgType.PONG:
        return Pong(version, *values)
    return Ping()


def parameters_payload(payload: Encoded, flags: int) -> Encoded:
    if not flags & DELTA and payload.codec != DENSE:
        raise WireError("bad_descriptor", f"dense parameters must be codec {DENSE}, got {payload.codec}")
    return payload


def utf8(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise WireError("malformed", f"{what} is not UTF-8") from None


def apply_parameters(current: Tensor | None, payload: Encoded, delta: bool) -> Tensor:
    """The receiver's parameters after a PARAMS or ACK payload: a copy of the dense values, or `current` plus
    the decoded delta, in place. The PS advances its replica of a worker with the very same call, so both
    hold the same bits. ValueError for a delta without parameters to apply it to."""
    if not delta:
        return decode_update(payload)
    if current is None:
        raise ValueError("a parameter delta arrived before any dense parameters")
    return add_into(current, payload)


class CountingSocket:
    """A ZeroMQ socket that counts the bytes of every frame it sends and receives (`wire_bytes`).

    For a ROUTER (`routed`), frame 0 is the peer's routing id, which never crosses the network: it is not
    counted, and the counts are also kept per peer (`by_peer[routing id] = [sent, received]`)."""

    def __init__(self, sock: zmq.Socket, routed: bool = False):
        self.sock, self.routed = sock, routed
        self.sent = self.received = 0
        self.by_peer: dict[bytes, list[int]] = {}

    def send(self, frames: list[Any], copy: bool = False) -> None:
        """Send; without `copy`, ZeroMQ reads the frames' memory later, so it must not change until sent."""
        self.sock.send_multipart(frames, copy=copy)
        self._count(frames, 0)

    def recv(self, flags: int = 0) -> list[zmq.Frame]:
        frames = self.sock.recv_multipart(flags, copy=False)
        self._count(frames, 1)
        return frames

    def recv_bounded(self, max_frames: int, max_bytes: int, flags: int = 0) -> tuple[list[zmq.Frame], WireError | None]:
        """One message, read a frame at a time and checked as it is read (`check_bounds`; a ROUTER's routing id
        is not part of the message). Past a bound the rest is read and dropped frame by frame: the frames kept
        are those within the bounds, and the error says which bound broke. ZeroMQ hands over a multipart
        message only once it holds all of it (docs/architecture.md says what that leaves to bound)."""
        first = self.sock.recv(flags, copy=False)
        frames, more = [first], first.more
        count, total = (0, 0) if self.routed else (1, len(first))
        error = None
        while more:
            frame = self.sock.recv(copy=False)
            more, count, total = frame.more, count + 1, total + len(frame)
            if error is None:
                try:
                    check_bounds(count, total, max_frames=max_frames, max_bytes=max_bytes)
                    frames.append(frame)
                    continue
                except WireError as exc:
                    error = exc.with_traceback(None)  # a traceback would keep this call's frames alive
            self._count([first, frame] if self.routed else [frame], 1)  # dropped at once, but it came in
        self._count(frames, 1)
        return frames, error

    def _count(self, frames: list[Any], direction: int) -> None:
        n = wire_bytes(frames[1:] if self.routed else frames)
        if direction:
            self.received += n
        else:
            self.sent += n
        if self.routed:
            peer = bytes(frames[0].bytes if isinstance(frames[0], zmq.Frame) else frames[0])
            self.by_peer.setdefault(peer, [0, 0])[direction] += n

    def close(self, linger_ms: int = 0) -> None:
        """Close, dropping what is still queued after `linger_ms` (the PS gives its last STOP replies time)."""
        self.sock.close(linger=linger_ms)
