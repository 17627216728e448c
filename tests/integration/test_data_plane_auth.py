"""Who gets through to a live PS (controller, PS and a worker as real processes on loopback, CURVE on):

- an unauthenticated ZeroMQ peer (no security, or a CURVE key nobody registered) gets no answer, and its flood
  (a PING followed by 16 frames of 60 MiB, the attack of issue 11) costs the PS nothing: refused in the
  handshake, before ZeroMQ takes a message from it;
- a registered peer's same flood is refused (`oversize`, at its second big frame), the PS gives the memory
  back, and the peer is cut off: no answer, its key banned, its connection closed (ZeroMQ holds a multipart
  message whole before the PS sees its first frame, so that one message is what such a peer costs);
- a registered peer saying HELLO under the real worker's name is refused `wrong_identity`;
- a peer the controller declared dead loses its admission, on its open connection and for new ones;
while the real worker's training goes on through all of it."""

import threading
import time

import zmq
from ml_support import Probe, ml_run, ps_public_key, wait_for_version

from dist_llm_train import wire
from dist_llm_train.dataplane import new_credential

NUMEL = 49_920  # ml_ci.yaml's model
FLOOD_FRAMES, FLOOD_FRAME = 16, 60 << 20
RSS_GROWTH_BOUND = 64 << 20
OVERRIDES = {"workers.count": 1, "ml.budget.max_versions": 10**6, "ml.budget.max_time_s": 150.0,
             "ml.budget.eval_every": 500}


def rss(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) << 10
    raise RuntimeError(f"no VmRSS for {pid}")


class PeakRss:
    """The highest RSS of a process, sampled every 20 ms while in the `with` block."""

    def __init__(self, pid: int):
        self.pid, self.before, self.peak = pid, rss(pid), 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)

    def sample(self):
        while not self.done.wait(0.02):
            self.peak = max(self.peak, rss(self.pid))

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()


def flood(sock: zmq.Socket) -> None:
    """PING, then 16 frames of 60 MiB in the same message (one buffer sent 16 times: the test holds 60 MiB)."""
    frame = bytes(FLOOD_FRAME)
    sock.send(wire.encode(wire.Ping())[0], zmq.SNDMORE)
    for i in range(FLOOD_FRAMES):
        sock.send(frame, zmq.SNDMORE if i < FLOOD_FRAMES - 1 else 0, copy=False)


def ping_unless_cut_off(probe: Probe) -> wire.Message | None:
    """PING's answer, or None: none within 3 s, or no connection to send it on (a DEALER without one would
    block in send)."""
    try:
        probe.sock.send(wire.encode(wire.Ping())[0], zmq.NOBLOCK)
    except zmq.Again:
        return None
    return probe.answer(3)


def test_an_unauthenticated_peer_gets_no_answer_and_its_flood_costs_the_ps_nothing(tmp_path, process_log):
    with ml_run(tmp_path, process_log, OVERRIDES) as run:
        run.start()
        wait_for_version(run, 20, 120)
        context = zmq.Context()
        bare = context.socket(zmq.DEALER)  # no security at all
        stranger = context.socket(zmq.DEALER)  # CURVE with the PS's real public key, a key nobody registered
        own = new_credential("curve")
        stranger.curve_serverkey, stranger.curve_publickey = ps_public_key(run).encode(), own.public.encode()
        stranger.curve_secretkey = own.secret.encode()
        with PeakRss(run.ps.pid) as memory:
            for sock in (bare, stranger):
                sock.setsockopt(zmq.LINGER, 0)
                sock.connect(run.env["PS_ADDRESS"])
                flood(sock)
            answered = [sock.poll(5000) for sock in (bare, stranger)]
            before = Probe(run).pong()
        for sock in (bare, stranger):
            sock.close()
        context.term()
        wait_for_version(run, before.version + 20, 60)  # training goes on
        run.stop_run("test over")
        run.wait_end(60)
    log = open(process_log.name).read()
    print(f"PS RSS {memory.before >> 20} MiB before, peak {memory.peak >> 20} MiB during two unauthenticated floods")

    assert answered == [0, 0]
    assert memory.peak - memory.before < RSS_GROWTH_BOUND, (memory.before, memory.peak)
    assert "data plane: refused a CURVE handshake" in log  # the stranger; the bare peer fails the greeting


def test_a_registered_peer_is_bounded_held_to_its_name_and_dropped_when_dead(tmp_path, process_log):
    with ml_run(tmp_path, process_log, OVERRIDES) as run:
        run.start()
        wait_for_version(run, 20, 120)
        flooder = Probe(run, NUMEL, name="flooder")
        with PeakRss(run.ps.pid) as memory:
            flooder.sock.send_multipart([wire.encode(wire.Ping())[0]])  # one message through, to be sure of the key
            assert isinstance(flooder.answer(), wire.Pong)
            flood(flooder.sock)
            cut = "worker 'flooder' sent a message past the bounds (oversize: message of more than 67108864 bytes"
            # CURVE moves the 960 MiB at a few hundred MB/s on 2 loaded cores: allow a minute
            run.wait_until(lambda: cut in open(process_log.name).read(), 90, "the PS to cut the flooder off")
            refused = flooder.answer(1)
        again = ping_unless_cut_off(flooder)  # ZeroMQ reconnects: the banned key is refused in the handshake
        after = rss(run.ps.pid)
        flooder.close()

        impostor_probe = Probe(run, NUMEL, name="impostor")
        impostor = impostor_probe.ask(wire.encode(wire.Hello(run.env["RUN_TOKEN"], "local-worker-0", 0)))
        own = impostor_probe.ask(wire.encode(wire.Hello(run.env["RUN_TOKEN"], "impostor", 0)))
        flooder = impostor_probe
        flooder.go_silent()  # declared dead after heartbeat_timeout_s (3 s); the PS's list is refreshed every 2 s
        deadline = time.monotonic() + 20
        while isinstance(answer := flooder.ask(wire.encode(wire.Ping()), timeout_s=2), wire.Pong):
            assert time.monotonic() < deadline, "still admitted 20 s after going silent"
            time.sleep(0.5)
        flooder.sock.close()
        flooder.sock = flooder.connect()  # the same key, a new connection: refused in the handshake
        reconnected = ping_unless_cut_off(flooder)
        version = Probe(run).pong().version
        wait_for_version(run, version + 20, 60)  # training goes on
        flooder.close()
        run.stop_run("test over")
        run.wait_end(60)
    print(f"PS RSS {memory.before >> 20} MiB before, peak {memory.peak >> 20} MiB during a registered peer's "
          f"flood, {after >> 20} MiB after")

    assert refused is None and again is None  # cut off: no answer, and its reconnection refused
    assert after - memory.before < RSS_GROWTH_BOUND, (memory.before, after)
    assert isinstance(impostor, wire.Error) and impostor.code == "wrong_identity", impostor
    assert isinstance(own, wire.Welcome)
    assert isinstance(answer, wire.Error) and answer.code == "not_admitted", answer
    assert reconnected is None
