"""Garbage at a live PS: random frames, wrong shapes, NaN / Inf, oversize, unknown session, wrong version,
a bad token, a HELLO under another worker's name and more, sent from the test's own sockets (registered at the
controller like workers, so the PS admits their keys) while a real worker trains. Each gets an ERROR with
its code, the PS's error counter moves by exactly that many, the worker's training goes on, and the run ends
normally when the controller stops it."""

import random

import torch
import zmq
from ml_support import Probe, ml_run, row_of, wait_for_version

from dist_llm_train import wire
from dist_llm_train.ml.codecs import encode

NUMEL = 49_920  # ml_ci.yaml's model


def push(session, base_version=0, update=None):
    update = encode(torch.zeros(NUMEL), "none", 1.0) if update is None else update
    return wire.encode(wire.Push(session, base_version, update, 2.0, 0.1, 16))


def test_garbage_is_refused_with_codes_while_a_worker_trains(tmp_path, process_log):
    overrides = {"workers.count": 1, "workers.speed": [0.2], "ml.max_message_mb": 1,
                 "ml.budget.max_versions": 10**6, "ml.budget.max_time_s": 150.0, "ml.budget.eval_every": 500,
                 "ml.budget.eval_every_s": 1e9}
    rng = random.Random(0)
    with ml_run(tmp_path, process_log, overrides) as run:
        run.start()
        wait_for_version(run, 20, 120)
        probe, other = Probe(run, NUMEL, name="fuzzer"), Probe(run, NUMEL, name="other")
        before = probe.pong()
        welcome = probe.ask(wire.encode(wire.Hello(run.env["RUN_TOKEN"], "fuzzer", 99)))
        session = welcome.session
        nan = encode(torch.zeros(NUMEL), "none", 1.0)
        nan.arrays["values"][7] = float("nan")
        frames = push(session)
        cases = {
            "random frame": ([rng.randbytes(100)], "bad_magic"),
            "random frames": ([rng.randbytes(rng.randrange(100, 5000)) for _ in range(wire.MAX_FRAMES)], "bad_magic"),
            "empty frame": ([b""], "truncated"),
            "wrong wire version": ([bytes(frames[0][:4]) + b"\x09" + bytes(frames[0][5:]), frames[1]], "bad_wire_version"),
            "wrong shape": (push(session, update=encode(torch.zeros(NUMEL - 1), "none", 1.0)), "bad_array"),
            "NaN": (push(session, update=nan), "non_finite"),
            "unknown session": (push(12345), "unknown_session"),
            "wrong version": (push(session, base_version=10**9), "bad_version"),
            "wrong codec": (push(session, update=encode(torch.ones(NUMEL), "topk", 0.01)), "wrong_codec"),
            "bad token": (wire.encode(wire.Hello("x" * 32, "fuzzer", 0)), "bad_token"),
            "another worker's name": (wire.encode(wire.Hello(run.env["RUN_TOKEN"], "local-worker-0", 0)),
                                      "wrong_identity"),
            "not a request": (wire.encode(wire.Ack(0, True, 0, encode(torch.zeros(NUMEL), "none", 1.0), False)),
                              "unexpected_type"),
        }
        answers = {name: probe.ask(frames) for name, (frames, _) in cases.items()}
        answers["another connection's session"] = other.ask(wire.encode(wire.Pull(session)))
        cases["another connection's session"] = (None, "session_mismatch")
        # past the bounds of a message: counted, no answer, the sender cut off (its key banned)
        past = {"oversize": [bytes(wire.encode(wire.Ping())[0]), b"x" * 700_000, b"x" * 700_000],
                "too_many_frames": [bytes(wire.encode(wire.Ping())[0]), b"x", b"x", b"x"]}
        cut_off = {code: Probe(run, NUMEL, name=code).ask(frames, timeout_s=5) for code, frames in past.items()}
        # one frame above the limit never reaches the PS's code: ZeroMQ drops that connection
        huge = Probe(run, NUMEL, name="huge")
        silent = huge.ask([b"y" * (3 << 20)], timeout_s=3)
        after = probe.pong()
        wait_for_version(run, after.version + 20, 60)  # training goes on
        run.stop_run("fuzz test over")
        final = run.wait_end(60)
        run.ps.wait(timeout=30)
        row = row_of(run, final)
        for p in (probe, other, huge):
            p.close()
    log = open(process_log.name).read()

    assert welcome.numel == NUMEL
    codes = {name: (a.code if isinstance(a, wire.Error) else a) for name, a in answers.items()}
    assert codes == {name: code for name, (_, code) in cases.items()}
    assert silent is None
    assert cut_off == {"oversize": None, "too_many_frames": None}
    assert after.errors - before.errors == len(cases) + len(past)
    assert after.version > before.version
    for code in {code for _, code in cases.values()} | set(past):
        assert f"{code} so far)" in log, code
    assert run.ps.returncode == 0 and row["status"] == "stopped"
    assert "the controller ended the run (stopped)" in log
