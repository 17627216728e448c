"""ML mode on a worker: train on one shard through the parameter server until the run is over.

`run_shard(agent, task)` runs the whole task: build the model (same seed as the PS) and this shard's batches
(`task["shard"]` of `task["num_shards"]` of the training text), connect a DEALER to PS_ADDRESS with this
worker's data-plane key (dataplane.py; CURVE checks the PS's public key from the controller), say HELLO
with the run token (WELCOME must name the same model and config, else the worker waits and tries again),
PULL the parameters, then one round after another:

    load the parameters -> gradient of one batch (local steps H = 1) or the parameter delta of H inner
    Adam steps (H > 1) -> error feedback + encode with the run's codec (`ErrorFeedback`, per worker) ->
    a Byzantine worker (its index in `attack.workers`) replaces its update (`worker.attacks`) -> PUSH ->
    ACK: accepted or refused, staleness, and the new parameters (dense, or a delta the worker adds to its own,
    see ps/server.py), which the next round starts from.

Compression (`ml.compression`): `policy: fixed` sends every update in the run's codec and ratio and takes the
run's downlink. `policy: adaptive` (ml/adaptive.py) picks codec and ratio before each upload with
`ml.adaptive.choose` from this worker's own measurements (`LinkMeter`): the RTT of a PING after HELLO and
every PING_EVERY rounds, the link rate of each exchange (the join's dense PULL first, then every PUSH and
its ACK: the bytes both ways at the socket over the time from send to reply, minus the ACK's `held_s` and
the RTT) and the round's compute time. The PUSH asks the PS for the same codec and ratio on the downlink (one
measured rate for both directions) and carries the measurements, which the PS logs to codec_decisions.csv.
Error feedback keeps one float32 residual across codec switches.

A refused update is dropped (its compressed part is lost with it; the error-feedback residual keeps only
what compression left out) and the ACK's fresh parameters resync the worker. ERROR `unknown_session` (the PS
restarted) or any other ERROR: HELLO again and take dense parameters. The PS gone (its connection closed,
seen by a socket monitor), a handshake the PS refused (the key not admitted yet or any more: the heartbeat
thread registers again when the controller says so), or silent for `ml.reply_timeout_s` (+ `staleness.sync_timeout_s` in sync mode,
where an ACK waits for the round): rebuild the socket and HELLO again. The loop ends when an answer carries
STOP or the agent is stopping (the controller ended the run); the task is then completed.

Divergence: before sending, the worker checks its own honest update (`ml.divergence`): a non-finite loss or
update, or an L2 norm above `ml.max_update_norm`, means its training diverged, and so would every worker's
(same model, same settings, same parameters from the PS). It sends ERROR `training_failed` with what it saw
instead of the update; the PS ends the run `failed` with that reason and answers STOP, so the row says why
within a round instead of the run idling to its time budget. An update its codec cannot carry (fp16
overflow) or an attack's output that is not finite is reported the same way.

Compute speed: a worker with `agent.speed` < 1 sleeps (1/speed - 1) x its compute time after each
computation, which emulates a slower device without burning the shared CPU; that sleep counts as compute
(the emulated device is busy), in tokens/s and in compute utilization.

Telemetry about every second: tokens/s (tokens of a round / its compute seconds), step time (wall time of a
round: compute + push + ACK), epoch, batch, staleness of the last update, bytes up/down at the socket (every
frame sent and received, ZMTP frame headers included, across rebuilt sockets), and compute utilization =
compute seconds / wall seconds since the first parameters arrived (model build and corpus load are set-up,
not training; `agent.started` is moved there so the heartbeat reports the same figure).

Bad data from the PS (a failed check in `wire.decode`) is logged and answered by a new socket and a fresh HELLO.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

import torch
import zmq
from zmq.utils.monitor import recv_monitor_message

from .. import wire
from ..config import RunConfig
from ..dataplane import Credential, setup_client
from ..ml.adaptive import LinkMeter, choose
from ..ml.codecs import ErrorFeedback, encode
from ..ml.data import BatchSampler, load_corpus, shard, split
from ..ml.divergence import divergence, max_update_norm
from ..ml.model import build_model, count_parameters
from ..ml.train import LocalSteps, fair_share, flat_parameters, gradient, load_flat, set_threads
from ..ps.report import LogThrottle, fmt
from ..schema import validate
from .attacks import ATTACKS
from .client import Conflict

ATTACK_SAMPLES = 4  # honest updates an ALIE / IPM attacker keeps to estimate the honest mean and spread
MIN_SAMPLES = {"alie": 2}  # a spread needs two
TELEMETRY_S = 1.0
RETRY_S = 5.0  # after a WELCOME for another model or config
SLICE_STEPS = 5  # local steps between updates of the compute-time counter
POLL_S = 0.5  # how often a wait for the PS looks at agent.stopping
REFUSED_WAIT_S = 1.0  # after a handshake the PS refused: the key may be admitted a moment later
PING_EVERY = 10  # compression.policy adaptive: rounds between RTT measurements (PING -> PONG)


class PsGone(Exception):
    """The PS closed the connection or did not answer in time."""


class PsRefused(PsGone):
    """The PS refused the handshake: this worker's key is not admitted (yet, or any more), or it is not this PS."""


class PsLink:
    """The worker's DEALER to the PS: one request, one reply, with a deadline; bytes counted across sockets."""

    def __init__(self, address: str, max_bytes: int, reply_timeout_s: float, stopping: threading.Event,
                 key: Credential, name: str):
        self.address, self.max_bytes, self.reply_timeout_s = address, max_bytes, reply_timeout_s
        self.stopping, self.key, self.name = stopping, key, name
        self.server_key: str | None = None  # CURVE: the PS's public key, set before `connect`
        self.connects = 0
        self.context = zmq.Context()
        self.sock: wire.CountingSocket | None = None
        self.monitor: zmq.Socket | None = None
        self.counted_up = self.counted_down = 0  # by sockets already closed
        self.numel: int | None = None  # known after WELCOME; replies with arrays need it

    def connect(self) -> None:
        self.close_socket()
        sock = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        setup_client(sock, self.key, self.name, self.server_key)
        self.monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                                               | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
        sock.connect(self.address)
        self.sock = wire.CountingSocket(sock)

    def request(self, msg: wire.Message) -> wire.Message:
        """Send `msg` and return the reply. PsGone if the connection closes, nothing comes in time or the
        worker is stopping; WireError if the reply does not pass `wire.decode`."""
        if self.sock is None:
            self.connect()
        self.sock.send(wire.encode(msg))
        poller = zmq.Poller()
        poller.register(self.sock.sock, zmq.POLLIN)
        poller.register(self.monitor, zmq.POLLIN)
        deadline = time.monotonic() + self.reply_timeout_s
        while (left := deadline - time.monotonic()) > 0:
            if self.stopping.is_set():
                raise PsGone("the worker is stopping")
            ready = dict(poller.poll(int(min(left, POLL_S) * 1000) + 1))
            if self.sock.sock in ready:  # before the monitor: a reply may come just before the PS leaves
                return wire.decode(self.sock.recv(), max_bytes=self.max_bytes, numel=self.numel)
            if self.monitor in ready:
                if recv_monitor_message(self.monitor)["event"] == zmq.EVENT_DISCONNECTED:
                    raise PsGone(f"the PS at {self.address} closed the connection")
                raise PsRefused(f"the PS at {self.address} refused the handshake (key not admitted, or not this PS's)")
        raise PsGone(f"no answer from the PS at {self.address} within {self.reply_timeout_s:g} s")

    def tell(self, msg: wire.Message) -> None:
        """Send without waiting for an answer (BYE)."""
        if self.sock is not None:
            self.sock.send(wire.encode(msg))

    @property
    def bytes_up(self) -> int:
        return self.counted_up + (self.sock.sent if self.sock else 0)

    @property
    def bytes_down(self) -> int:
        return self.counted_down + (self.sock.received if self.sock else 0)

    def close_socket(self) -> None:
        if self.sock is not None:
            self.counted_up, self.counted_down = self.bytes_up, self.bytes_down
            self.sock.sock.disable_monitor()
            self.monitor.close(linger=0)
            self.sock.close()
            self.sock = self.monitor = None

    def close(self, linger_s: float = 1.0) -> None:
        if self.sock is not None:
            self.sock.sock.setsockopt(zmq.LINGER, int(linger_s * 1000))  # let a BYE out
        self.close_socket()
        self.context.term()


class ShardTrainer:
    def __init__(self, agent: Any, task: dict[str, Any]):
        self.agent, self.task, self.log = agent, task, agent.log
        self.worker_id = agent.worker_id
        self.config: RunConfig = validate(RunConfig, agent.config, "the run config from the controller")
        ml = self.ml = self.config.ml
        set_threads(agent.settings.torch_threads or fair_share(self.config.workers.count + 1))  # + the PS
        self.model = build_model(ml.model, self.config.seed)
        self.numel = count_parameters(self.model)
        self.max_norm = max_update_norm(ml, self.numel)
        self.digests = (wire.model_digest(self.config, self.numel), wire.config_digest(self.config))
        train, _ = split(load_corpus(ml.data.path, ml.data.seq_len), ml.data.val_fraction, ml.data.seq_len)
        text = shard(train, task["shard"], task["num_shards"])
        self.batches = BatchSampler(text, ml.data.batch_size, ml.data.seq_len, seed=self.config.seed * 1009 + task["shard"])
        self.local = LocalSteps(self.model, ml.local.inner_lr) if ml.local.steps > 1 else None
        codec = ml.compression
        self.adaptive = codec.policy == "adaptive"
        self.meter = LinkMeter()  # adaptive: this worker's link, measured from its own exchanges with the PS
        self.rounds = 0
        self.feedback = ErrorFeedback() if codec.error_feedback and (self.adaptive or codec.codec != "none") else None
        self.attack = ATTACKS.get(ml.attack.kind) if agent.index in ml.attack.workers else None
        self.honest: deque[torch.Tensor] = deque(maxlen=ATTACK_SAMPLES)
        self.attack_noise = torch.Generator().manual_seed(self.config.seed + 7919 * (agent.index + 1))
        timeout = ml.reply_timeout_s + (ml.staleness.sync_timeout_s if ml.staleness.protocol == "sync" else 0)
        self.link = PsLink(agent.settings.ps_address, ml.max_message_mb << 20, timeout, agent.stopping,
                           agent.data_key, agent.name)
        self.throttle = LogThrottle(self.log, 5.0)
        self.session: int | None = None
        self.params: torch.Tensor | None = None
        self.version = 0
        self.first_params: float | None = None
        self.compute_s = 0.0
        self.last = {"tokens_per_sec": None, "step_time_s": None, "staleness": None}
        self.told = 0.0
        self.log.info("shard %d of %d: %d bytes of text; model %d parameters; codec %s; local steps %d; speed %g%s",
                      task["shard"], task["num_shards"], len(text), self.numel, codec.label, ml.local.steps,
                      agent.speed, f"; Byzantine ({ml.attack.kind})" if self.attack else "")

    def run(self) -> None:
        stop = False
        try:
            while not stop and self.agent.holds(self.worker_id):
                try:
                    stop = self.join() if self.session is None else self.round()
                except PsGone as exc:
                    if not self.agent.holds(self.worker_id):
                        break
                    self.log.warning("%s: reconnecting", exc)
                    self.session = None
                    if isinstance(exc, PsRefused):
                        self.agent.stopping.wait(REFUSED_WAIT_S)
                    self.link.server_key = None  # asked again: a PS whose checkpoints were removed has a new one
                    self.link.close_socket()
                except wire.WireError as exc:  # a new socket too: a stray reply must not answer the next request
                    self.log.error("bad message from the PS: %s: reconnecting and saying HELLO again", exc)
                    self.session = None
                    self.link.close_socket()
                self.telemetry()
        finally:
            if self.session is not None:
                self.link.tell(wire.Bye(self.session))
            self.link.close()
        self.telemetry(force=True)
        if stop or self.agent.stopping.is_set():
            self.complete()

    def join(self) -> bool:
        """HELLO, check the WELCOME, PULL dense parameters. True if the PS says the run is over."""
        if self.link.sock is None and not self.connect():
            return False
        welcome = self.link.request(wire.Hello(self.agent.settings.run_token, self.agent.name, self.agent.index))
        if isinstance(welcome, wire.Error):
            self.log.error("PS refused HELLO: %s %s; trying again in %g s", welcome.code, welcome.text, RETRY_S)
            self.agent.stopping.wait(RETRY_S)
            return False
        if not isinstance(welcome, wire.Welcome):
            raise wire.WireError("unexpected_type", f"{type(welcome).__name__} in answer to HELLO")
        if (welcome.numel, welcome.model_digest, welcome.config_digest) != (self.numel, *self.digests):
            self.log.error("the PS serves another model or config (%d parameters; this worker has %d): trying again "
                           "in %g s", welcome.numel, self.numel, RETRY_S)
            self.agent.stopping.wait(RETRY_S)
            return False
        self.session, self.link.numel = welcome.session, self.numel
        self.log.info("joined the PS: session %016x", welcome.session)
        if welcome.stop:
            return True
        if self.adaptive:  # the connection is up now (HELLO's time included its handshakes): a clean round trip
            self.ping()
        params, moved, seconds = self.exchange(wire.Pull(self.session))
        self.meter.transfer(moved, seconds)  # dense parameters down: the first rate measurement
        return self.take(params)

    def ping(self) -> None:
        """PING -> PONG carry no arrays: an RTT sample."""
        pong, _, seconds = self.exchange(wire.Ping())
        if isinstance(pong, wire.Pong):
            self.meter.rtt(seconds)

    def exchange(self, msg: wire.Message) -> tuple[wire.Message, int, float]:
        """A request and its reply, with the bytes both moved (up + down, at the socket) and the seconds it took."""
        before, started = self.link.bytes_up + self.link.bytes_down, time.perf_counter()
        reply = self.link.request(msg)
        return reply, self.link.bytes_up + self.link.bytes_down - before, time.perf_counter() - started

    def connect(self) -> bool:
        """A new socket to the PS with its current key; False (after a wait) while the PS has announced none."""
        if self.ml.data_plane_auth == "curve" and self.link.server_key is None:
            key = self.agent.ps_key(refresh=self.link.connects > 0)
            if key is None or key["mode"] != "curve":
                self.throttle.info("ps_key", "the PS has not announced its key yet: waiting")
                self.agent.stopping.wait(RETRY_S / 5)
                return False
            self.link.server_key = key["public_key"]
        self.link.connect()
        self.link.connects += 1
        return True

    def round(self) -> bool:
        """One computation, PUSH, ACK. True if the PS says the run is over."""
        started = time.perf_counter()
        load_flat(self.model, self.params)
        if self.local is None:
            update, loss = self.timed(lambda: gradient(self.model, *next(self.batches)))
        else:  # in slices, so compute time (telemetry, the heartbeat's utilization) stays current in long rounds
            losses = [self.timed(lambda n=n: self.local.run(self.batches, n))[1] * n for n in slices(self.ml.local.steps)]
            update, loss = flat_parameters(self.model) - self.params, sum(losses) / self.ml.local.steps
        compute = time.perf_counter() - started
        tokens = self.ml.data.batch_size * self.ml.data.seq_len * self.ml.local.steps
        self.last["tokens_per_sec"] = tokens / compute
        problem = divergence(loss, update, self.max_norm)
        if problem is not None:
            return self.training_failed(f"diverged at version {self.version}: {problem}")
        codec, ratio = self.choose(compute)
        try:
            encoded = self.encode(update, codec, ratio)
        except ValueError as exc:  # fp16 overflow, or an attack's output not finite
            return self.training_failed(f"cannot send its update of version {self.version}: {exc}")
        c = self.ml.compression
        down = (codec, ratio) if self.adaptive else (c.codec if c.downlink == "same" else "none", c.ratio)
        push = wire.Push(self.session, self.version, encoded, loss, compute,
                         self.ml.data.batch_size * self.ml.local.steps, *down,
                         self.meter.mbit or 0.0, 1000 * (self.meter.rtt_s or 0.0))
        reply, moved, seconds = self.exchange(push)
        if isinstance(reply, wire.Ack):
            self.meter.transfer(moved, seconds, reply.held_s)
        stop = self.take(reply)
        self.last["step_time_s"] = time.perf_counter() - started
        return stop

    def choose(self, compute_s: float) -> tuple[str, float]:
        """The codec and ratio of this round's upload: the configured ones, or (adaptive) `ml.adaptive.choose` on
        this worker's measurements, a PING first every PING_EVERY rounds to keep the RTT current. The meter has
        one rate for both directions, so the worker asks the PS for the same choice on its downlink."""
        c = self.ml.compression
        if not self.adaptive:
            return c.codec, c.ratio
        self.rounds += 1
        if self.rounds % PING_EVERY == 0:
            self.ping()
        choice = choose(self.meter.mbit, compute_s, self.numel, c.comm_budget, c.min_ratio)
        self.throttle.info(f"codec:{choice.codec}", "codec %s ratio %.4g up and down (link %s Mbit/s, RTT %s ms, "
                           "compute %.3f s)", choice.codec, choice.ratio, fmt(self.meter.mbit),
                           fmt(None if self.meter.rtt_s is None else 1000 * self.meter.rtt_s), compute_s)
        return choice.codec, choice.ratio

    def training_failed(self, what: str) -> bool:
        """Tell the PS this worker's training cannot go on (module docstring); True when it answers STOP."""
        self.log.error("training %s: telling the PS, which ends the run", what)
        return self.take(self.link.request(wire.Error("training_failed", what)))

    def timed(self, work):
        """Run `work`, stretched to the worker's speed (module docstring), and count it as compute."""
        started = time.perf_counter()
        result = work()
        if self.agent.speed < 1:
            self.agent.stopping.wait((1 / self.agent.speed - 1) * (time.perf_counter() - started))
        self.compute_s += time.perf_counter() - started
        self.agent.compute_s = self.compute_s
        return result

    def encode(self, update: torch.Tensor, codec: str, ratio: float):
        if self.attack is not None:
            self.honest.append(update)
            if len(self.honest) >= MIN_SAMPLES.get(self.ml.attack.kind, 1):  # ALIE's first update goes out honest
                samples = torch.stack(list(self.honest))
                update = self.attack(update, samples, self.ml.attack.scale, self.attack_noise)
        if self.feedback is not None:
            return self.feedback.compress(update, codec, ratio)
        return encode(update, codec, ratio)

    def take(self, reply: wire.Message) -> bool:
        """Apply the parameters of a PARAMS or ACK; an ERROR drops the session (HELLO again). True on STOP."""
        if isinstance(reply, wire.Error):
            how = "the PS restarted" if reply.code == "unknown_session" else "refused"
            self.log.warning("PS answered %s (%s): %s; saying HELLO again", reply.code, how, reply.text)
            self.session = None
            return False
        if not isinstance(reply, (wire.Params, wire.Ack)):
            raise wire.WireError("unexpected_type", f"{type(reply).__name__} where parameters were expected")
        try:
            self.params = wire.apply_parameters(self.params, reply.payload, reply.delta)
        except ValueError as exc:
            raise wire.WireError("bad_array", str(exc)) from None
        self.version = reply.version
        if self.first_params is None:
            self.first_params = time.monotonic()
            self.agent.started = self.first_params  # utilization counts from here (module docstring)
        if isinstance(reply, wire.Ack):
            self.last["staleness"] = reply.staleness
            if not reply.accepted and not reply.stop:
                self.throttle.info("refused", "update refused (staleness %d): resynced to version %d",
                                   reply.staleness, reply.version)
        return reply.stop

    def telemetry(self, force: bool = False) -> None:
        now = time.monotonic()
        self.agent.bytes_up, self.agent.bytes_down = self.link.bytes_up, self.link.bytes_down
        if not force and now - self.told < TELEMETRY_S:
            return
        self.told = now
        fields = {**self.last, "epoch": int(self.batches.epoch), "batch": self.batches.batches_drawn,
                  "bytes_up": self.link.bytes_up, "bytes_down": self.link.bytes_down}
        if self.first_params is not None:
            fields["compute_utilization"] = min(1.0, self.compute_s / max(1e-9, now - self.first_params))
        self.agent.send_telemetry(**{k: v for k, v in fields.items() if v is not None})

    def complete(self) -> None:
        try:
            self.agent.complete(self.task, b"")
        except Conflict:  # the run ended before the completion: nothing more is counted, as expected
            self.log.info("run over: shard %d not counted as completed (the run had ended)", self.task["shard"])


def slices(steps: int, size: int = SLICE_STEPS) -> list[int]:
    """`steps` local steps as slices of at most `size`: 50 -> [5] * 10, 12 -> [5, 5, 2]."""
    return [size] * (steps // size) + ([steps % size] if steps % size else [])


def run_shard(agent: Any, task: dict[str, Any]) -> None:
    ShardTrainer(agent, task).run()
