"""wire.py: every message round-trips, every codec's arrays survive framing, and every malformed message is
refused with its code (truncated, oversize, wrong magic / version / type, descriptors vs frames, dtype and
length, NaN / Inf, bad text and flags), on real ZeroMQ sockets for the byte counts."""

import struct

import pytest
import torch
import zmq

from dist_llm_train import wire, wire_header
from dist_llm_train.ml.codecs import LAYOUT, encode

D = 1000
LIMIT = 1 << 20


def update(codec: str, seed: int = 0):
    x = torch.randn(D, generator=torch.Generator().manual_seed(seed))
    return encode(x, codec, 0.05)


def roundtrip(msg, numel=D):
    return wire.decode(wire.encode(msg), max_bytes=LIMIT, numel=numel)


def as_bytes(frames):
    return [bytes(f) for f in frames]


def same_arrays(a, b):
    return a.codec == b.codec and list(a.arrays) == list(b.arrays) and all(
        torch.equal(a.arrays[k], b.arrays[k]) for k in a.arrays)


@pytest.mark.parametrize("msg", [
    wire.Hello("t" * 32, "worker-3", 3),
    wire.Hello("tökén", "wörker", 0),
    wire.Welcome(2**63 - 1, D, b"m" * 32, b"c" * 32, stop=True),
    wire.Pull(17),
    wire.Bye(17),
    wire.Error("bad_token", "HELLO with a wrong run token"),
    wire.Ping(),
    wire.Pong(12, 100, 7, 3),
])
def test_messages_without_arrays_round_trip(msg):
    assert roundtrip(msg) == msg


@pytest.mark.parametrize("codec", list(LAYOUT))
def test_push_round_trips_every_codec_bit_for_bit(codec):
    msg = wire.Push(5, 42, update(codec), 2.5, 0.125, 32, "topk", 0.0125, 7.5, 90.25)
    got = roundtrip(msg)
    assert (got.session, got.base_version, got.train_loss, got.compute_s, got.samples) == (5, 42, 2.5, 0.125, 32)
    assert (got.down_codec, got.down_ratio, got.link_mbit, got.rtt_ms) == ("topk", 0.0125, 7.5, 90.25)
    assert same_arrays(got.update, msg.update)


@pytest.mark.parametrize(("codec", "delta", "stop"), [("none", False, False), ("fp16", True, True), ("int8", True, False),
                                                      ("topk", True, False)])
def test_ack_and_params_round_trip(codec, delta, stop):
    payload = update("none") if not delta else update(codec)
    ack = roundtrip(wire.Ack(9, True, 3, payload, delta, stop, held_s=0.375))
    assert (ack.version, ack.accepted, ack.staleness, ack.delta, ack.stop, ack.held_s) == (9, True, 3, delta, stop, 0.375)
    assert same_arrays(ack.payload, payload)
    params = roundtrip(wire.Params(9, payload, delta, stop))
    assert (params.version, params.delta, params.stop) == (9, delta, stop)
    assert same_arrays(params.payload, payload)


def test_framing_costs_a_few_dozen_bytes_on_top_of_the_payload():
    frames = wire.encode(wire.Push(1, 0, update("none"), 1.0, 0.1, 16))
    # frame 0: 28-byte header + one 10-byte descriptor + 45-byte body; ZMTP: 2 + 9 bytes of frame headers
    assert len(frames[0]) == 28 + 10 + 45
    assert wire.wire_bytes(frames) == 4 * D + 83 + 2 + 9


def test_dense_parameters_apply_as_a_copy_and_deltas_add_in_place():
    dense = update("none")
    params = wire.apply_parameters(None, dense, delta=False)
    assert torch.equal(params, dense.arrays["values"]) and params.data_ptr() != dense.arrays["values"].data_ptr()
    delta = update("topk", seed=1)
    expected = params + torch.zeros(D).index_put_((delta.arrays["indices"].long(),), delta.arrays["values"].float())
    assert wire.apply_parameters(params, delta, delta=True) is params
    assert torch.equal(params, expected)
    with pytest.raises(ValueError, match="before any dense parameters"):
        wire.apply_parameters(None, delta, delta=True)


def good_push_frames(codec="none"):
    return as_bytes(wire.encode(wire.Push(5, 1, update(codec), 2.0, 0.1, 8)))


def patch_header(frames, **fields):
    """Rewrite fields of frame 0's header (names as in wire.HEADER)."""
    names = ("magic", "wire_version", "kind", "flags", "codec", "count", "body_len", "session", "version")
    values = dict(zip(names, wire.HEADER.unpack_from(frames[0])))
    values.update(fields)
    return [wire.HEADER.pack(*values.values()) + frames[0][wire.HEADER.size:], *frames[1:]]


def patch_descriptor(frames, index, **fields):
    names = ("name", "dtype", "length")
    offset = wire.HEADER.size + index * wire.DESCRIPTOR.size
    values = dict(zip(names, wire.DESCRIPTOR.unpack_from(frames[0], offset)))
    values.update(fields)
    head = frames[0][:offset] + wire.DESCRIPTOR.pack(*values.values()) + frames[0][offset + wire.DESCRIPTOR.size:]
    return [head, *frames[1:]]


def nan_push_frames():
    frames = good_push_frames()
    values = bytearray(frames[1])
    values[8:12] = struct.pack("<f", float("nan"))
    return [frames[0], bytes(values)]


def inf_fp16_push_frames():
    frames = good_push_frames("fp16")
    values = bytearray(frames[1])
    values[0:2] = torch.tensor([float("inf")], dtype=torch.float16).numpy().tobytes()
    return [frames[0], bytes(values)]


def push_with_losses(train_loss, compute_s):
    return as_bytes(wire.encode(wire.Push(5, 1, update("none"), train_loss, compute_s, 8)))


def push_asking(**fields):
    """A PUSH whose body fields (names as in the PUSH body) are rewritten, past what wire.encode would allow."""
    frames = good_push_frames()
    at = wire.HEADER.size + wire.DESCRIPTOR.size
    body = wire.BODIES[wire.MsgType.PUSH][1]
    names = ("train_loss", "compute_s", "samples", "down_code", "down_ratio", "link_mbit", "rtt_ms")
    values = dict(zip(names, body.unpack_from(frames[0], at)))
    values.update(fields)
    return [frames[0][:at] + body.pack(*values.values()), *frames[1:]]


def ack_held(held_s):
    frames = as_bytes(wire.encode(wire.Ack(3, True, 0, update("none"), False)))
    at = wire.HEADER.size + wire.DESCRIPTOR.size
    return [frames[0][:at] + wire.BODIES[wire.MsgType.ACK][1].pack(0, held_s), *frames[1:]]


def unsorted_topk_frames():
    frames = good_push_frames("topk")
    indices = bytearray(frames[1])
    indices[0:4], indices[4:8] = indices[4:8], indices[0:4]
    return [frames[0], bytes(indices), frames[2]]


def hello_frames(token_len, name_len, text):
    body = struct.pack("!IHH", 0, token_len, name_len) + text
    return [wire.HEADER.pack(wire.MAGIC, wire.WIRE_VERSION, wire.MsgType.HELLO, 0, 0, 0, len(body), 0, 0) + body]


REFUSALS = {
    "no frames": ([], "truncated"),
    "short header": ([b"DLTW\x01"], "truncated"),
    "frame 0 shorter than announced": (lambda: [good_push_frames()[0][:-3], good_push_frames()[1]], "truncated"),
    "frame 0 longer than announced": (lambda: [good_push_frames()[0] + b"x", good_push_frames()[1]], "malformed"),
    "oversize": (lambda: [*good_push_frames(), b"x" * LIMIT], "oversize"),
    "wrong magic": (lambda: patch_header(good_push_frames(), magic=b"HTTP"), "bad_magic"),
    "wrong wire version": (lambda: patch_header(good_push_frames(), wire_version=wire.WIRE_VERSION - 1), "bad_wire_version"),
    "unknown type": (lambda: patch_header(good_push_frames(), kind=99), "unknown_type"),
    "flag the type cannot carry": (lambda: patch_header(good_push_frames(), flags=wire.STOP), "malformed"),
    "unknown codec": (lambda: patch_header(good_push_frames(), codec=9), "bad_descriptor"),
    "codec with another array count": (lambda: patch_header(good_push_frames(), codec=2), "bad_descriptor"),
    "missing array frame": (lambda: good_push_frames()[:1], "bad_descriptor"),
    "extra frame": (lambda: [*good_push_frames(), b"\x00" * 4], "bad_descriptor"),
    "array name wrong": (lambda: patch_descriptor(good_push_frames(), 0, name=wire.ARRAY_NAMES.index("indices")),
                         "bad_descriptor"),
    "unknown array name": (lambda: patch_descriptor(good_push_frames(), 0, name=200), "bad_descriptor"),
    "dtype wrong": (lambda: patch_descriptor(good_push_frames(), 0, dtype=wire.DTYPES.index(torch.float16)),
                    "bad_descriptor"),
    "length vs frame size": (lambda: patch_descriptor(good_push_frames(), 0, length=D - 1), "bad_array"),
    "wrong shape for the model": (lambda: as_bytes(wire.encode(wire.Push(5, 1, encode(torch.ones(D - 10), "none", 1),
                                                                         1.0, 0.1, 8))), "bad_array"),
    "length above the model": (lambda: patch_descriptor(good_push_frames(), 0, length=2**40), "bad_array"),
    "NaN value": (nan_push_frames, "non_finite"),
    "Inf in float16": (inf_fp16_push_frames, "non_finite"),
    "NaN loss": (lambda: push_with_losses(float("nan"), 0.1), "non_finite"),
    "negative compute time": (lambda: push_with_losses(2.0, -1.0), "malformed"),
    "top-k indices unsorted": (unsorted_topk_frames, "bad_array"),
    "downlink codec unknown": (lambda: push_asking(down_code=len(wire.CODECS)), "malformed"),
    "downlink ratio 0": (lambda: push_asking(down_ratio=0.0), "malformed"),
    "downlink ratio above 1": (lambda: push_asking(down_ratio=1.5), "malformed"),
    "downlink ratio NaN": (lambda: push_asking(down_ratio=float("nan")), "non_finite"),
    "link rate Inf": (lambda: push_asking(link_mbit=float("inf")), "non_finite"),
    "negative RTT": (lambda: push_asking(rtt_ms=-1.0), "malformed"),
    "ACK held NaN": (lambda: ack_held(float("nan")), "non_finite"),
    "ACK held negative": (lambda: ack_held(-0.5), "malformed"),
    "arrays on a type without": (lambda: [wire.encode(wire.Pull(3))[0], b"x"], "bad_descriptor"),
    "HELLO text lengths": (lambda: hello_frames(4, 4, b"abc"), "malformed"),
    "HELLO token too long": (lambda: hello_frames(300, 0, b"t" * 300), "malformed"),
    "HELLO not UTF-8": (lambda: hello_frames(2, 0, b"\xff\xfe"), "malformed"),
    "PULL with a body": (lambda: [patch_header(wire.encode(wire.Pull(3)), body_len=4)[0] + b"abcd"], "malformed"),
    "dense parameters not fp32": (lambda: as_bytes(wire.encode(wire.Params(1, update("fp16"), delta=False))),
                                  "bad_descriptor"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_decode_refuses_with_a_code(case):
    frames, code = REFUSALS[case]
    frames = frames() if callable(frames) else frames
    with pytest.raises(wire.WireError) as refused:
        wire.decode(frames, max_bytes=LIMIT, numel=D)
    assert refused.value.code == code, refused.value


def test_arrays_before_the_model_size_is_known_are_refused():
    with pytest.raises(wire.WireError, match="before the model's size is known"):
        wire.decode(good_push_frames(), max_bytes=LIMIT, numel=None)


def test_oversize_is_judged_before_anything_inside_the_message():
    frames = patch_header(good_push_frames(), magic=b"XXXX")
    with pytest.raises(wire.WireError) as refused:
        wire.decode(frames, max_bytes=100, numel=D)
    assert refused.value.code == "oversize"


def test_an_unknown_error_code_from_a_newer_peer_still_decodes():
    frames = as_bytes(wire.encode(wire.Error("bad_token", "x")))
    body_at = wire.HEADER.size
    frames[0] = frames[0][:body_at] + struct.pack("!H", 999) + frames[0][body_at + 2:]
    assert wire.decode(frames, max_bytes=LIMIT, numel=None) == wire.Error("code_999", "x")


def test_counting_socket_counts_every_frame_and_each_peer_on_real_sockets():
    context = zmq.Context()
    router = wire.CountingSocket(context.socket(zmq.ROUTER), routed=True)
    port = router.sock.bind_to_random_port("tcp://127.0.0.1")
    dealers = [wire.CountingSocket(context.socket(zmq.DEALER)) for _ in range(2)]
    try:
        for dealer in dealers:
            dealer.sock.connect(f"tcp://127.0.0.1:{port}")
        push = wire.encode(wire.Push(1, 0, update("topk"), 1.0, 0.1, 8))
        dealers[0].send(push)
        dealers[1].send(wire.encode(wire.Ping()))
        received = {}
        for _ in range(2):
            frames = router.recv()
            received[bytes(frames[0].buffer)] = frames[1:]
            router.send([frames[0], *wire.encode(wire.Pong(0, 0, 0, 0))])
        for dealer in dealers:
            assert dealer.sock.poll(5000)
            assert isinstance(wire.decode(dealer.recv(), max_bytes=LIMIT, numel=None), wire.Pong)
        pong_bytes = wire.wire_bytes(wire.encode(wire.Pong(0, 0, 0, 0)))
        assert dealers[0].sent == wire.wire_bytes(push) and dealers[0].received == pong_bytes
        assert router.received == wire.wire_bytes(push) + wire.wire_bytes(wire.encode(wire.Ping()))
        assert router.sent == 2 * pong_bytes
        assert sorted(router.by_peer.values()) == sorted([[pong_bytes, wire.wire_bytes(push)],
                                                          [pong_bytes, wire.wire_bytes(wire.encode(wire.Ping()))]])
        decoded = [wire.decode(f, max_bytes=LIMIT, numel=D) for f in received.values()]
        assert {type(m) for m in decoded} == {wire.Push, wire.Ping}
    finally:
        for s in (router, *dealers):
            s.close()
        context.term()


def test_the_health_checks_torch_free_ping_and_pong_match_the_wire():
    assert wire.decode([wire_header.ping()], max_bytes=LIMIT, numel=None) == wire.Ping()
    pong = wire.encode(wire.Pong(41, 1, 2, 3))
    assert wire_header.pong_version(bytes(pong[0])) == 41
    assert wire_header.pong_version(bytes(wire.encode(wire.Ping())[0])) is None
    assert wire_header.pong_version(b"short") is None


@pytest.mark.parametrize("linger_ms, delivered", [(2000, True), (0, False)])
def test_a_counting_socket_closed_with_a_linger_still_delivers_what_is_queued(linger_ms, delivered, tmp_path):
    # The PS's last STOP reply is queued when it leaves: closed with a linger of 2 s the message still goes out;
    # with 0 (as the PS once closed) it was dropped. Nothing listens yet when the message is queued, so nothing
    # but the linger can deliver it. An ipc endpoint: no port to race for, no TCP self-connect.
    endpoint = f"ipc://{tmp_path}/linger"
    sender_ctx, receiver_ctx = zmq.Context(), zmq.Context()
    sender = wire.CountingSocket(sender_ctx.socket(zmq.PUSH))
    sender.sock.connect(endpoint)
    sender.send([b"stop"])
    sender.close(linger_ms)
    receiver = receiver_ctx.socket(zmq.PULL)
    receiver.bind(endpoint)
    sender_ctx.term()  # returns once the queue is delivered or dropped
    try:
        assert bool(receiver.poll(1000)) == delivered
    finally:
        receiver.close(linger=0)
        receiver_ctx.term()
