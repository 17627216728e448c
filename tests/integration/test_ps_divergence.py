"""The PS's defences against absurd and diverged updates, through its real socket on loopback, the test playing
the workers message by message: a finite 3e38 push is refused by the norm bound and counted; one that gets
past a raised bound overflows the parameters and ends the run `failed` at that step; a final evaluation
with no finite loss turns the end into `failed`; a worker's `training_failed` report ends the run with its
words; none of these leaves a stale loss in the final report."""

import math

import pytest
import torch

from dist_llm_train import wire
from dist_llm_train.ml.codecs import encode
from test_ps_protocol import serve  # noqa: F401 (a fixture)

POISON = 3e38  # the largest round float32 below its maximum: finite, so the wire's NaN / Inf check passes it


def test_a_finite_but_absurd_update_is_refused_counted_and_the_run_goes_on(serve):
    server, connect = serve({})
    honest, poisoner = connect("honest"), connect("poisoner")
    poisoned = poisoner.take(poisoner.ask(poisoner.push(torch.full((server.numel,), POISON), "none")))
    assert (poisoned.accepted, poisoned.version) == (False, 0)
    assert torch.equal(poisoner.params, server.params)  # fresh parameters with the refusal
    ack = honest.take(honest.ask(honest.push(torch.full((server.numel,), 0.01), "none")))
    assert (ack.accepted, ack.version) == (True, 1)
    assert server.counters.refused == {"norm": 1} and server.counters.rejected == 1
    assert server.report_body(done=False)["updates_refused"] == {"norm": 1}
    assert server.ended is None and math.isfinite(server.params.abs().max().item())


def test_a_norm_refusal_in_a_sync_round_leaves_the_worker_free_to_send_its_update(serve):
    server, connect = serve({"ml.staleness.protocol": "sync"})
    a, b = connect("a"), connect("b")
    refused = a.take(a.ask(a.push(torch.full((server.numel,), POISON), "none")))
    assert (refused.accepted, refused.version) == (False, 0)
    small = torch.full((server.numel,), 0.01)
    a.send(a.push(small, "none"))
    b.send(b.push(small, "none"))
    acks = [a.take(a.answer(5)), b.take(b.answer(5))]
    assert [(x.accepted, x.version) for x in acks] == [(True, 1), (True, 1)]
    assert server.counters.refused == {"norm": 1}


@pytest.mark.parametrize("codec", ["none", "int8"])  # int8: the downlink is a delta against a replica
def test_parameters_that_overflow_end_the_run_failed_at_that_step(serve, codec):
    # With the bound raised out of the way, SGD (lr 0.5, momentum 0.9) takes 3e38 to -1.5e38 (finite); the
    # second push makes the momentum buffer 5.7e38: Inf, and the parameters with it.
    server, connect = serve({"ml.max_update_norm": 1e42, "ml.compression.codec": codec})
    worker = connect("a")
    first = worker.take(worker.ask(worker.push(torch.full((server.numel,), POISON), codec)))
    assert first.accepted and not first.stop and server.ended is None
    # The answer to the step that overflows comes after the run's end: the final evaluation (of NaN parameters)
    # and the checkpoint happen first. (Its "over 10 s" on CI was an ACK dropped by a forced LINGER 0 on close.)
    worker.send(worker.push(torch.full((server.numel,), POISON), codec))
    second = worker.answer(60)
    assert second.accepted and second.stop and second.payload.codec == "none" and not second.delta
    assert server.ended == "failed: the parameters are NaN or Inf after the step to version 2 (the model diverged)"
    assert not math.isfinite(server.params.abs().max().item())  # the wire cannot carry them: STOP with finite ones
    assert torch.equal(second.payload.arrays["values"], torch.nan_to_num(server.params))
    report = server.report_body(done=True)
    assert report["final_val_loss"] is None and report["initial_val_loss"] is not None  # not version 0's loss
    assert report["reason"] == server.ended


def test_a_final_evaluation_without_a_finite_loss_ends_the_run_failed(serve):
    # Parameters of about 1e37 are finite, but the LSTM's products overflow: the validation loss is Inf or NaN.
    server, connect = serve({"ml.max_update_norm": 1e42, "ml.budget.max_versions": 1})
    worker = connect("a")
    huge = 2e37 * torch.randn(server.numel, generator=torch.Generator().manual_seed(0))
    worker.send(worker.push(huge, "none"))
    ack = worker.answer(60)  # after the final evaluation, as above
    assert ack.accepted and ack.stop and math.isfinite(server.params.abs().max().item())
    assert server.ended.startswith("failed: final version 1: its validation loss is ")
    assert server.ended.endswith("(the model diverged); the run had ended: budget: max_versions 1 reached at version 1")
    assert server.report_body(done=True)["final_val_loss"] is None


def test_a_workers_training_failed_report_ends_the_run_with_its_words(serve):
    server, connect = serve({"ml.staleness.protocol": "sync"})
    waiting, diverged = connect("waiting"), connect("diverged")
    waiting.send(waiting.push(torch.zeros(server.numel), "none"))  # in the open round
    answer = diverged.ask(wire.Error("training_failed", "diverged at version 0: training loss is nan"))
    assert isinstance(answer, wire.Params) and answer.stop
    assert server.ended == "failed: worker 'diverged' diverged at version 0: training loss is nan"
    told = waiting.answer(5)  # the round's waiting worker hears STOP at once
    assert isinstance(told, wire.Ack) and told.stop and not told.accepted


def test_a_training_failed_text_becomes_one_bounded_line(serve):
    server, connect = serve({})
    worker = connect("w")
    worker.ask(wire.Error("training_failed", "diverged\nFAKE LOG LINE\r\n" + "x" * 2000))
    assert server.ended.startswith("failed: worker 'w' diverged FAKE LOG LINE xxx") and "\n" not in server.ended
    assert len(server.ended) == len("failed: worker 'w' ") + 400


def test_an_error_from_a_stranger_or_with_another_code_is_refused(serve):
    server, connect = serve({})
    member = connect("member")
    stranger = connect("stranger", hello=False)  # admitted, but never said HELLO
    unknown = stranger.ask(wire.Error("training_failed", "let me end your run"))
    other = member.ask(wire.Error("server_error", "not a worker's report"))
    stranger.sock.close()
    assert (unknown.code, other.code) == ("unknown_session", "unexpected_type")
    assert server.ended is None and server.counters.errors == {"unknown_session": 1, "unexpected_type": 1}


def test_the_poison_is_what_the_wire_passes():
    # Guard of the premise: 3e38 is finite in float32, so only the norm bound stands in its way.
    update = encode(torch.full((10,), POISON), "none", 1.0)
    frames = wire.encode(wire.Push(1, 0, update, 2.0, 0.1, 16))
    assert isinstance(wire.decode(frames, max_bytes=1 << 20, numel=10), wire.Push)
