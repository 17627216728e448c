"""The PS's protocols through its real socket on loopback, the test playing the workers message by message:
the compressed downlink keeps each worker's parameters bit-identical to the PS's replica of them and
converges to the PS's parameters; a sync round drops its straggler after the timeout and refuses the
straggler's late update with fresh parameters; async refuses beyond the bound; under compression.policy
adaptive one window mixes codecs (sync and async), each worker gets its parameters in the codec it asked for,
switching between dense and delta, and a request below min_ratio is refused."""

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
from dist_llm_train.ml.codecs import decode, encode
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


# compression.policy adaptive: each worker its own codec up and the one it asks for down, in one window
ASKS = {"a": ("none", "none", 1.0), "b": ("fp16", "int8", 1.0), "c": ("int8", "fp16", 1.0), "d": ("topk", "topk", 0.05)}


def adaptive_push(worker, update, codec, down, down_ratio):
    return wire.Push(worker.session, worker.version, encode(update, codec, 0.05), 2.0, 0.1, 16, down, down_ratio,
                     8.0, 30.0)


@pytest.mark.parametrize("protocol", ["sync", "async"])
def test_adaptive_window_mixes_codecs_and_answers_each_worker_in_its_own(serve, protocol):
    server, connect = serve({"ml.compression.policy": "adaptive", "ml.staleness.protocol": protocol,
                             "workers.count": 4, "ml.aggregation.window": 4, "ml.staleness.bound": 100})
    workers = {name: connect(name) for name in ASKS}
    gen = torch.Generator().manual_seed(5)
    for round_ in range(3):
        before = server.params.clone()
        sent = []
        for name, worker in workers.items():
            up, down, ratio = ASKS[name] if round_ != 1 else ("topk", "none", 1.0)  # round 1: everyone switches
            push = adaptive_push(worker, torch.randn(server.numel, generator=gen) * 0.01, up, down, ratio)
            sent.append(decode(push.update))
            worker.send(push)
        acks = {name: worker.take(worker.answer(10)) for name, worker in workers.items()}
        # one step over the four updates, whatever their codecs: SGD's first step is lr x their mean
        if round_ == 0:
            expected = before - 0.5 * torch.stack(sent).mean(dim=0)
            assert torch.allclose(server.params, expected, atol=1e-6)
        # sync: every ACK waits for the step; async: the window's first three are answered before it
        assert server.version == round_ + 1 and all(a.accepted for a in acks.values())
        assert [a.version for a in acks.values()] == [round_ + 1] * 4 if protocol == "sync" else [round_] * 3 + [round_ + 1]
        for name, ack in acks.items():
            down, ratio = ASKS[name][1:] if round_ != 1 else ("none", 1.0)
            assert ack.payload.codec == down and ack.delta == (down != "none"), (round_, name, ack.payload.codec)
            if down == "topk":
                assert ack.payload.arrays["indices"].numel() == round(ratio * server.numel)
            # dense or delta, every worker holds exactly what the PS thinks it holds (switching included)
            assert torch.equal(workers[name].params, server.sessions[workers[name].session].replica)
            if down == "none" and ack.version == server.version:
                assert torch.equal(workers[name].params, server.params)
    assert server.counters.accepted == 12 and not server.counters.errors


def test_adaptive_refuses_a_downlink_ratio_below_min_ratio_and_fixed_refuses_another_codec(serve):
    server, connect = serve({"ml.compression.policy": "adaptive", "ml.compression.min_ratio": 0.01})
    worker = connect("a")
    refused = worker.ask(adaptive_push(worker, torch.zeros(server.numel), "none", "topk", 0.001))
    assert isinstance(refused, wire.Error) and refused.code == "wrong_codec" and "min_ratio" in refused.text
    assert server.counters.accepted == 0 and server.counters.errors["wrong_codec"] == 1
    assert worker.take(worker.ask(adaptive_push(worker, torch.zeros(server.numel), "none", "topk", 0.01))).accepted

    fixed, connect_fixed = serve({"ml.compression.codec": "int8"})
    other = connect_fixed("b")
    refused = other.ask(adaptive_push(other, torch.zeros(fixed.numel), "topk", "int8", 1.0))
    assert isinstance(refused, wire.Error) and refused.code == "wrong_codec"


def test_a_slice_evaluation_pending_at_the_budgets_end_that_reaches_the_target_says_so_in_the_reason(serve):
    # The budget ended the run at version 10 while the slice evaluation of version 10 was still running;
    # finish() waits for it and it reaches the target: the row then has a time to target, and its reason
    # must not still say "before target" alone.
    server, _ = serve({"ml.budget.target_val_loss": 2.3})
    budget_end = ("budget: max_tokens 2000000 (2048000 tokens trained) reached at version 10, before target_val_loss "
                  "2.3 (last validation slice loss 2.3222 at version 9)")
    server.ended = budget_end
    server.on_evaluation(10, "slice", 2.2017, None, 0.0)

    assert server.time_to_target_s is not None
    assert server.ended == (f"{budget_end}; then the pending evaluation of the slice: target_val_loss 2.3 reached at "
                            "version 10 (2.2017)")
    server.on_evaluation(10, "final", 2.2388, None, 0.0)  # the final set's loss changes nothing of that
    assert server.ended.endswith("(2.2017)")
