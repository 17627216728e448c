"""The PS's protocols through its real socket on loopback, the test playing the workers message by message:
the compressed downlink keeps each worker's parameters bit-identical to the PS's replica of them and
converges to the PS's parameters; a sync round drops its straggler after the timeout and refuses the
straggler's late update with fresh parameters; async refuses beyond the bound."""

import logging
import threading

import pytest
import torch
import zmq
from ml_support import ML_CI

from dist_llm_train import wire
from dist_llm_train.config import load_run_config
from dist_llm_train.dataplane import KeyRegistry, new_credential, setup_client
from dist_llm_train.demo import free_port
from dist_llm_train.ml.codecs import encode
from dist_llm_train.ps.server import ParameterServer

TOKEN = "protocol-test-token-0123456789"
LIMIT = 64 << 20


class Worker:
    """A worker played message by message, its key admitted by the PS (`admit`); `hello`: join at once."""

    def __init__(self, context, address, name, numel, server, admit, hello=True):
        self.sock = context.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        setup_client(self.sock, admit(name), name, server.public)
        self.sock.connect(address)
        self.numel, self.params, self.version = numel, None, 0
        if hello:
            welcome = self.ask(wire.Hello(TOKEN, name, 0))
            self.session = welcome.session
            self.take(self.ask(wire.Pull(self.session)))

    def send(self, msg):
        self.sock.send_multipart(wire.encode(msg))

    def answer(self, timeout_s=10.0):
        assert self.sock.poll(int(timeout_s * 1000)), "no answer from the PS"
        return wire.decode(self.sock.recv_multipart(), max_bytes=LIMIT, numel=self.numel)

    def ask(self, msg):
        self.send(msg)
        return self.answer()

    def take(self, reply):
        self.params = wire.apply_parameters(self.params, reply.payload, reply.delta)
        self.version = reply.version
        return reply

    def push(self, update, codec, base=None):
        return wire.Push(self.session, self.version if base is None else base, encode(update, codec, 0.01), 2.0, 0.1, 16)


@pytest.fixture
def serve():
    servers, context = [], zmq.Context()

    def start(overrides):
        config = load_run_config(ML_CI, {"ml.budget.eval_every": 10**6, "ml.budget.eval_every_s": 1e9, **overrides})
        address = f"tcp://127.0.0.1:{free_port()}"
        key, registry, keys = new_credential("curve"), KeyRegistry("curve"), {}

        def admit(name):  # what the controller's registration does for the PS
            own = new_credential("curve")
            keys[name] = own.public
            registry.replace(keys)
            return own

        server = ParameterServer(config, TOKEN, address, logging.getLogger("ps-test"), key=key, registry=registry)
        thread = threading.Thread(target=server.serve, daemon=True)
        thread.start()
        servers.append((server, thread))
        return server, lambda name, hello=True: Worker(context, address, name, server.numel, key, admit, hello)

    yield start
    for server, thread in servers:
        server.request_stop()
        thread.join(timeout=10)
    context.destroy(linger=0)


def test_topk_downlink_keeps_replicas_exact_and_converges(serve):
    server, connect = serve({"ml.compression.codec": "topk", "ml.staleness.bound": 100})
    workers = [connect("a"), connect("b")]
    gen = torch.Generator().manual_seed(0)
    for step in range(30):
        worker = workers[step % 2]
        ack = worker.take(worker.ask(worker.push(torch.randn(server.numel, generator=gen) * 0.01, "topk")))
        assert ack.accepted and ack.delta
        replica = server.sessions[worker.session].replica
        assert torch.equal(worker.params, replica)  # the same bits on both ends
        assert ack.payload.arrays["indices"].numel() == round(0.01 * server.numel)  # 1 % of the parameters down
    behind = (workers[0].params - server.params).abs().max().item()
    for _ in range(60):  # no new versions: each PULL sends the next top 1 % of what the worker still lacks
        workers[0].take(workers[0].ask(wire.Pull(workers[0].session)))
    caught_up = (workers[0].params - server.params).abs().max().item()
    assert behind > 1e-3 and caught_up < 1e-6, (behind, caught_up)


def test_a_dense_downlink_sends_the_exact_parameters_to_a_topk_run(serve):
    server, connect = serve({"ml.compression.codec": "topk", "ml.compression.downlink": "none",
                             "ml.staleness.bound": 100})
    worker = connect("a")
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        ack = worker.take(worker.ask(worker.push(torch.randn(server.numel, generator=gen) * 0.01, "topk")))
        assert ack.accepted and not ack.delta and ack.payload.codec == "none"
        assert torch.equal(worker.params, server.params)  # exact at every step, no replica kept
    assert server.sessions[worker.session].replica is None


def test_sync_round_drops_its_straggler_and_refuses_its_late_update(serve):
    server, connect = serve({"ml.staleness.protocol": "sync", "ml.staleness.sync_timeout_s": 0.5})
    a, b, late = connect("a"), connect("b"), connect("late")
    zero = torch.zeros(server.numel)
    a.send(a.push(zero, "none"))
    b.send(b.push(zero, "none"))
    assert not a.sock.poll(300)  # the round waits for the third worker...
    acks = [a.take(a.answer(5)), b.take(b.answer(5))]  # ...until 0.5 s after its first update
    assert [(x.accepted, x.staleness, x.version) for x in acks] == [(True, 0, 1), (True, 0, 1)]
    refused = late.take(late.ask(late.push(zero, "none")))
    assert (refused.accepted, refused.staleness, refused.version, refused.delta) == (False, 1, 1, False)
    assert torch.equal(late.params, server.params)  # fresh parameters came with the refusal
    assert server.counters.rejected == 1 and server.counters.accepted == 2


def test_async_refuses_beyond_the_bound_with_fresh_parameters(serve):
    server, connect = serve({"ml.staleness.bound": 2})
    fast, slow = connect("fast"), connect("slow")
    zero = torch.zeros(server.numel)
    for _ in range(3):
        assert fast.take(fast.ask(fast.push(zero, "none"))).accepted
    answer = slow.take(slow.ask(slow.push(zero, "none")))  # computed from version 0, the PS is at 3
    assert (answer.accepted, answer.staleness, answer.version) == (False, 3, 3)
    assert slow.take(slow.ask(slow.push(zero, "none"))).accepted
