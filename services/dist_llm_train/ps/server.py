"""The parameter server's data plane: one ZeroMQ ROUTER, one thread, a versioned flat fp32 parameter vector.

Per message (`handle`): decode and check it (`wire.decode`), act, answer. A refused message is answered with
ERROR and its code, counted (`errors`, by code) and logged (throttled); nothing a peer sends stops the loop.

    HELLO  run token checked (constant time), and the name must be the one whose key the connection proved
           (wrong_identity otherwise) -> a new session; the same worker name saying HELLO again (a rebuilt
           socket, a restarted worker) retires its old session first

Who may connect (ml.data_plane_auth, dataplane.py): only a connection whose key the controller registered for a
live worker gets through the handshake (ps/zap.py); every message then carries that key's ZAP user id, and a
message whose key is no longer admitted (the worker was declared dead or replaced) is refused `not_admitted`
and its session closed. A message is read a frame at a time (`CountingSocket.recv_bounded`): past
wire.MAX_FRAMES frames or `ml.max_message_mb` bytes the rest is dropped as it is read, the error counted, and
the sender cut off (`cut_off`: its key banned, its connection closed, no answer).
    PULL   -> PARAMS: dense, or a delta against the worker's replica (below)
    PUSH   staleness s = version now - base version; accepted or refused by the protocol, refused when its L2
           norm is above `ml.max_update_norm` (ml/divergence.py), then ACK with the worker's new parameters
           (sync: the ACK waits for the round to close). Refusals are counted by reason (`refused`).
    PING   -> PONG (version and counters; `ps --health` uses it)
    ERROR  `training_failed` from a worker whose own training diverged: the run ends `failed` with its text;
           PARAMS with STOP in answer

Protocols (`ml.staleness.protocol`: classes in ps/protocols.py, on the pure state of ps/rounds.py):
    sync      a barrier per version over the workers sent that version; `sync_timeout_s` after a round's first
              update the stragglers are dropped for the round; their late update (s >= 1) is refused with
              fresh parameters. The window is the round.
    async     accept s <= `staleness.bound`, else refuse with fresh parameters.
    adaptive  accept s <= the worker's own bound, `staleness.adaptive_bound` of the measured version rate and
              its measured round time (logged when it changes).
Async and adaptive step once `aggregation.window` accepted updates are in.

A step (`step`) over a window of n accepted updates: clip, staleness scale, `aggregation.rule` (its condition
checked at start, see `rule_window`), noise (`combine`, ps/combine.py); the server optimizer (`build_optimizer`:
SGD / Adam on gradients, or with local steps H > 1 DiLoCo's outer Nesterov step on parameter deltas);
version + 1; then the parameters are checked finite (one reduction, 0.1 ms per 1 M): finite updates can still
overflow them, and a run whose parameters are NaN or Inf ends `failed` at once.

Downlink, bytes per update for the default model (d = 938,240):
    codec none          every ACK / PARAMS carries the dense parameters: 3.75 MB down per 3.75 MB up.
    fp16, int8, topk    (with `compression.downlink: same`, the default; `none` sends dense parameters as above)
                        the PS keeps each worker's replica (the parameters it holds, as the PS computes them)
                        and sends C(params - replica) with the run's codec, then advances the replica by
                        exactly what it sent (`wire.apply_parameters`, the worker's own call): what compression
                        dropped stays in params - replica and goes out later (error feedback on the downlink),
                        so the worker converges to the PS's parameters. Top-k 1 %: 56 KB down per 56 KB up,
                        instead of 3.75 MB. A new session, and any delta that cannot be encoded (fp16
                        overflow), gets dense parameters. Replicas are per session and not checkpointed:
                        after a PS restart every worker starts from dense parameters.
    policy adaptive     each PUSH says which codec and ratio the worker wants its parameters in (ml/adaptive.py,
                        from its measured link); the PS validates the request (a known codec, a ratio in
                        [compression.min_ratio, 1]: `wrong_codec` otherwise), answers this PUSH and the next ones
                        that way (dense `none`, or a delta as above), and keeps every worker's replica so it can
                        switch between dense and delta at any update. Updates come in whatever codec each worker
                        chose: one window mixes codecs freely (each is decoded to float32 before the step). Every
                        PUSH's choice is a row of codec_decisions.csv (ps/decisions.py).

Evaluation of the validation slice every `budget.eval_every` versions or at the first version `eval_every_s`
after the last one, whichever comes first, runs in a thread (ps/evaluation.py, which states its cost); a
non-finite validation loss ends the run `failed` (the model diverged). The run ends at
`budget.target_val_loss` (checked on the slice; time_to_target_s and bytes_to_target are those of the version
that reached it), at the work budget (`max_tokens`, `max_versions`: reason "budget: ...") or at the wall-clock
cap (`max_time_s`, run time from the controller's clock: reason "cap: ..."): every reply then carries STOP,
the final evaluation (on the `eval_batches` set, of the last version), checkpoint and report (`done`) follow,
and the PS lingers up to LINGER_S to tell every worker. A final
evaluation that fails turns the end into `failed` with both reasons: the row never carries the loss of an
older version as the final one. Checkpoints (ps/checkpoint.py) every `checkpoint_every` versions, at the end and
on `request_stop` (SIGTERM); a PS started for a run with checkpoints resumes from the newest one.
"""

from __future__ import annotations

import hmac
import logging
import math
import secrets
import socket
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import zmq
from torch import Tensor

from .. import wire
from ..config import RunConfig
from ..dataplane import HEALTH_NAME, Credential, KeyRegistry, setup_server
from ..ml.codecs import DENSE, Encoded, all_finite, decode, encode, make, settings_of
from ..ml.data import load_corpus, split, validation_batches
from ..ml.divergence import max_update_norm, update_norm
from ..ml.model import build_model, count_parameters
from ..ml.train import flat_parameters
from ..schema import ConfigError
from . import checkpoint
from .aggregation import check_rule
from .combine import combine
from .counters import Counters
from .decisions import DecisionLog
from .evaluation import Evaluator
from .optimizer import build_optimizer
from .report import END_STATES, Curve, LogThrottle, Reporter
from .protocols import PROTOCOLS, Admission, StalenessProtocol
from .staleness import staleness
from .zap import ZapHandler

LINGER_S = 10.0  # after the end, how long the PS keeps answering STOP to workers it has not told yet
CLOSE_LINGER_MS = 2000  # the last STOP replies still go out on close (a LINGER of 0 dropped a queued one)
POLL_S = 0.1  # the loop's tick when no message comes: sync deadlines, evaluations, budgets, reports
RECENT_TRAIN = 20  # final_train_loss: mean over the last this many steps
IO_THREADS = 2  # ZeroMQ threads moving the PS's bytes (kernel copies), beside the loop's own thread
# Complete messages ZeroMQ may queue per connection before it stops reading that connection: a worker has one
# request out at a time (a BYE may follow it), so 4 never holds an honest worker back, and bounds what a
# connection can park in the PS to 4 messages of ml.max_message_mb (ZeroMQ's default: 1000).
RCV_HWM = 4
MAX_REPORT_TEXT = 400  # characters of a worker's training_failed text kept in the run's reason


def rule_window(config: RunConfig) -> tuple[int, int, str]:
    """(window n the rule must hold for, smallest window it holds for, the log line of check_rule).

    Sync: n is the number of workers (a round); async: `aggregation.window`. ConfigError naming the fields
    when the rule cannot hold: the PS refuses to start rather than fall back to the mean."""
    ml = config.ml
    agg = ml.aggregation
    protocol = PROTOCOLS[ml.staleness.protocol]
    n, where = protocol.window_size(config), protocol.window_field
    try:
        line = check_rule(agg.rule, n, agg.f, agg.multi_krum_m)
    except ValueError as exc:
        raise ConfigError(f"ml.aggregation.rule: {exc} (the window is {where} = {n}, "
                          f"protocol {ml.staleness.protocol})") from None
    smallest = next(k for k in range(1, n + 1) if rule_holds(agg.rule, k, agg.f, agg.multi_krum_m))
    return n, smallest, line


def rule_holds(rule: str, n: int, f: int, m: int | None) -> bool:
    try:
        check_rule(rule, n, f, m)
        return True
    except ValueError:
        return False


def bind_address(ps_address: str) -> str:
    """Where to listen for PS_ADDRESS: loopback when the workers reach the PS on loopback, else every interface."""
    host, _, port = ps_address.removeprefix("tcp://").rpartition(":")
    return f"tcp://127.0.0.1:{port}" if host in ("127.0.0.1", "localhost") else f"tcp://*:{port}"


@dataclass
class Session:
    id: int
    name: str
    index: int
    peer: bytes  # ZeroMQ routing id of the connection that said HELLO
    replica: Tensor | None = None  # compressing codecs: the parameters this worker holds
    down_codec: str = DENSE  # what its parameters travel in: the run's downlink, or (adaptive) what it asked for
    down_ratio: float = 1.0
    sent_version: int = -1  # the version the PS last sent it
    sent_at: float = 0.0
    told_stop: bool = False


@dataclass
class Row:
    """An accepted update waiting for its step."""
    session: int
    staleness: int
    update: Tensor  # [d] float32; codec none: a view of the received frame
    train_loss: float
    received: float  # monotonic time the PUSH arrived (the ACK says how long the PS held it)


class ParameterServer:
    def __init__(self, config: RunConfig, token: str, address: str, log: logging.Logger, *, key: Credential,
                 registry: KeyRegistry, fetch_keys: Callable[[], dict[str, str]] | None = None, run_id: str = "local",
                 run_dir: Path | None = None, checkpoint_dir: Path | None = None,
                 run_elapsed: Callable[[], float | None] = lambda: None, reporter: Reporter | None = None):
        """`key`: the PS's own (CURVE: its keypair); `registry`: the keys it admits, refreshed from `fetch_keys`
        (the controller's list of live workers; None: fixed). ConfigError if the aggregation rule cannot hold for
        the window, or the data cannot be read, or `key` is not of the run's ml.data_plane_auth."""
        ml = config.ml
        if ml is None:
            raise ConfigError("the PS needs an ML run config (mode: ml)")
        self.config, self.ml, self.token, self.log = config, ml, token.encode(), log
        self.run_id, self.checkpoint_dir, self.run_elapsed, self.reporter = run_id, checkpoint_dir, run_elapsed, reporter
        self.throttle = LogThrottle(log)
        self.window_size, min_window, rule_line = rule_window(config)
        log.info("aggregation %s", rule_line)

        model = build_model(ml.model, config.seed)
        self.numel = count_parameters(model)
        self.params = flat_parameters(model)
        self.optimizer = build_optimizer(ml, self.numel)
        self.noise = torch.Generator().manual_seed(config.seed)
        self.codec, self.ratio = ml.compression.codec, ml.compression.ratio
        self.down_codec = self.codec if ml.compression.downlink == "same" else DENSE
        self.adaptive = ml.compression.policy == "adaptive"
        # the PS keeps a worker's replica when its downlink may be a delta (adaptive: whenever it asks for one)
        self.keeps_replicas = self.adaptive or self.down_codec != DENSE
        self.max_bytes = ml.max_message_mb << 20
        self.max_norm = max_update_norm(ml, self.numel)
        self.model_digest, self.config_digest = wire.model_digest(config, self.numel), wire.config_digest(config)

        self.version = 0
        self.counters = Counters()
        self.initial_val_loss: float | None = None
        self.last_val: tuple[int, float] | None = None
        self.eval_failed: tuple[int, str] | None = None  # the last evaluation that gave no finite loss, and why
        self.time_to_target_s: float | None = None
        self.bytes_to_target: int | None = None  # up + down when the version that reached the target was applied
        self.final_val: tuple[int, float] | None = None  # the final evaluation's (version, loss)
        # every update is computed from local.steps batches of batch_size x seq_len tokens (bytes)
        self.tokens_per_update = ml.local.steps * ml.data.batch_size * ml.data.seq_len
        self.recent_train: deque[float] = deque(maxlen=RECENT_TRAIN)
        resumed = self.resume()

        self.sessions: dict[int, Session] = {}
        self.by_name: dict[str, int] = {}
        self.protocol: StalenessProtocol[Row] = PROTOCOLS[ml.staleness.protocol](ml, min_window, self.version)
        self.eval_times: dict[tuple[int, str], tuple[float, int]] = {}  # (version, set) -> (run time, bytes)
        self.last_eval_t = 0.0  # run time of the last slice evaluation submitted
        self.t0: float | None = None  # monotonic time of the run's start
        self.ended: str | None = None
        self.linger_until = 0.0
        self.stop_requested = False
        self.last_publish = 0.0

        train_val = split(load_corpus(ml.data.path, ml.data.seq_len), ml.data.val_fraction, ml.data.seq_len)
        val, budget = train_val[1], ml.budget
        self.evaluator = Evaluator(model, {
            "slice": validation_batches(val, ml.data.batch_size, ml.data.seq_len, budget.eval_slice_batches),
            "final": validation_batches(val, ml.data.batch_size, ml.data.seq_len, budget.eval_batches)})
        # the most versions the work budget allows (a token budget of n updates allows at most n versions)
        most = budget.max_versions if budget.max_tokens is None else min(
            budget.max_versions, math.ceil(budget.max_tokens / self.tokens_per_update))
        self.curve = Curve(run_dir, most) if run_dir is not None else None
        self.decisions = DecisionLog(run_dir) if run_dir is not None and self.adaptive else None

        if key.mode != ml.data_plane_auth or registry.mode != ml.data_plane_auth:
            raise ConfigError(f"ml.data_plane_auth: the run uses {ml.data_plane_auth}; the PS was given a {key.mode} "
                              f"key and a {registry.mode} registry")
        self.registry = registry
        self.context = zmq.Context(io_threads=IO_THREADS)
        self.zap = ZapHandler(self.context, registry, fetch_keys, log)
        self.zap.start()
        sock = self.context.socket(zmq.ROUTER)
        setup_server(sock, key)
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_bytes)  # a single frame above the limit: dropped by ZeroMQ
        sock.setsockopt(zmq.RCVHWM, RCV_HWM)
        sock.bind(address)
        self.sock = wire.CountingSocket(sock, routed=True)
        self.log_start(address, resumed)
        if not resumed:
            self.evaluate_initial()

    # ---- start and resume ----------------------------------------------------------------------------

    def log_start(self, address: str, resumed: bool) -> None:
        ml, dense = self.ml, 4 * self.numel
        if self.adaptive:
            compression = (f"compression adaptive per worker (comm_budget {ml.compression.comm_budget:g}, min_ratio "
                           f"{ml.compression.min_ratio:g})")
        else:
            up = make(self.codec, ratio=self.ratio).payload_bytes(self.numel)
            compression = (f"codec {self.codec} ({up / 1e3:.1f} KB per update, {100 * up / dense:.2f} % of dense, up"
                           f"{' and down' if self.down_codec == self.codec else '; dense down'})")
        shape = "x".join(str(v) for v in (ml.model.embed_dim, ml.model.hidden_dim, ml.model.layers))
        self.log.info("PS on %s (%s): %s %s, %d parameters (dense %.2f MB); protocol %s, window %d, %s, local steps "
                      "%d; %s at version %d", address, ml.data_plane_auth, ml.model.arch, shape, self.numel,
                      dense / 1e6, ml.staleness.protocol, self.window_size, compression, ml.local.steps,
                      "resumed" if resumed else "starting", self.version)

    def resume(self) -> bool:
        if self.checkpoint_dir is None:
            return False
        ckpt, problems = checkpoint.newest(self.checkpoint_dir, self.run_id)
        for problem in problems:
            self.log.warning("checkpoint skipped: %s", problem)
        if ckpt is None:
            return False
        meta = ckpt.meta
        try:  # everything read before anything is set: a damaged checkpoint leaves a fresh PS
            if meta.get("numel") != self.numel or ckpt.tensors["params"].shape != (self.numel,):
                raise ValueError(f"it holds {meta.get('numel')} parameters, the model has {self.numel}")
            counters = Counters.from_meta(meta["counters"])
            initial, last_val, target_s = meta["initial_val_loss"], meta["last_val"], meta["time_to_target_s"]
            target_bytes = meta.get("bytes_to_target")
            recent = list(meta["recent_train"])
            self.noise.set_state(ckpt.tensors["noise_rng"])
            self.optimizer.load_state({k.removeprefix("optimizer."): v for k, v in ckpt.tensors.items()
                                       if k.startswith("optimizer.")})  # changes nothing when it refuses
        except (ValueError, KeyError, TypeError, AttributeError, RuntimeError) as exc:
            self.log.warning("checkpoint of version %d not resumed: %s; starting afresh", ckpt.version, exc)
            return False
        self.params, self.version, self.counters = ckpt.tensors["params"], ckpt.version, counters
        self.initial_val_loss, self.time_to_target_s, self.bytes_to_target = initial, target_s, target_bytes
        self.last_val = tuple(last_val) if last_val else None
        self.recent_train.extend(recent)
        self.log.info("resumed run %s from its checkpoint of version %d", self.run_id, self.version)
        return True

    def save_checkpoint(self) -> None:
        if self.checkpoint_dir is None:
            return
        meta = {
            "config": self.config.model_dump(mode="json"), "model": self.ml.model.model_dump(mode="json"),
            "numel": self.numel, "initial_val_loss": self.initial_val_loss,
            "last_val": list(self.last_val) if self.last_val else None, "time_to_target_s": self.time_to_target_s,
            "bytes_to_target": self.bytes_to_target,
            "recent_train": list(self.recent_train),
            "counters": self.counters.to_meta(self.bytes_up(), self.bytes_down()),
        }
        tensors = {"params": self.params, "noise_rng": self.noise.get_state(),
                   **{f"optimizer.{k}": v for k, v in self.optimizer.state().items()}}
        started = time.perf_counter()
        path = checkpoint.save(self.checkpoint_dir / self.run_id, checkpoint.Checkpoint(self.run_id, self.version,
                                                                                        tensors, meta))
        self.log.info("checkpoint of version %d: %s (%.0f ms)", self.version, path,
                      1000 * (time.perf_counter() - started))

    # ---- the loop --------------------------------------------------------------------------------------

    def serve(self) -> int:
        """Serve until the run is over and every worker was told (or LINGER_S passed), or `request_stop`."""
        poller = zmq.Poller()
        poller.register(self.sock.sock, zmq.POLLIN)
        try:
            while True:
                now = time.monotonic()
                if self.stop_requested:
                    self.shutdown()
                    return 0
                if self.ended is not None and (now >= self.linger_until or self.everyone_told()):
                    self.log.info("every worker told to stop (or %g s passed): exiting", LINGER_S)
                    return 0
                if poller.poll(self.poll_timeout_ms(now)):
                    self.drain()
                self.tick(time.monotonic())
        finally:
            self.evaluator.close()
            self.sock.close(CLOSE_LINGER_MS)
            self.zap.close()
            self.context.term()

    def request_stop(self) -> None:
        """From a signal handler: checkpoint and leave at the next tick."""
        self.stop_requested = True

    def poll_timeout_ms(self, now: float) -> int:
        deadline = self.protocol.deadline()
        wait = POLL_S if deadline is None else min(POLL_S, max(0.0, deadline - now))
        return max(1, round(1000 * wait))

    def drain(self, limit: int = 64) -> None:
        for _ in range(limit):
            try:
                frames, too_big = self.sock.recv_bounded(wire.MAX_FRAMES, self.max_bytes, zmq.NOBLOCK)
            except zmq.Again:
                return
            self.handle(frames, too_big, time.monotonic())

    def tick(self, now: float) -> None:
        if self.ended is None and self.protocol.due(now):
            self.close_window(now)
        for version, on, loss, error in self.evaluator.results():
            self.on_evaluation(version, on, loss, error, now)
        if self.ended is None and self.t0 is not None and now - self.t0 >= self.ml.budget.max_time_s:
            self.finish(f"cap: max_time_s {self.ml.budget.max_time_s:g} s reached at version {self.version}"
                        f"{self.short_of_target()}", now)
        if self.ended is None and (self.budget_spent() is not None or self.time_to_target_s is not None):
            self.finish(f"budget already reached at version {self.version} (resumed after the end)", now)
        state = self.reporter.controller_state if self.reporter is not None else None
        if self.ended is None and state in END_STATES:
            self.finish(f"the controller ended the run ({state}) at version {self.version}", now)
        if self.reporter is not None and now - self.last_publish >= 0.5:
            self.reporter.publish(self.report_body(done=False))
            self.last_publish = now

    def handle(self, frames: list, too_big: wire.WireError | None, now: float) -> None:
        """One message: `frames` as `recv_bounded` kept them, `too_big` the bound it broke, if any."""
        peer = bytes(frames[0].buffer)
        if too_big is not None:  # counted, and no answer: the connection is closed
            self.refuse(peer, too_big)
            self.cut_off(peer, frames[1], too_big)
            return
        try:
            name = self.registry.name_of(frames[1].get("User-Id"))
            if name is None:
                self.close_sessions_of(peer, "its key is no longer admitted")
                raise wire.WireError("not_admitted", "this connection's key is no longer registered for a live "
                                                     "worker (declared dead or replaced): register again")
            msg = wire.decode(frames[1:], max_bytes=self.max_bytes, numel=self.numel)
            reply = self.dispatch(peer, name, msg, now)
        except wire.WireError as exc:
            reply = self.refuse(peer, exc)
        except Exception as exc:  # a bug must not take the data plane down: log it, answer, go on
            self.log.exception("error handling a message from %s", peer.hex())
            reply = self.refuse(peer, wire.WireError("server_error", f"{type(exc).__name__}: {exc}"[:500]))
        if reply is not None:
            self.send(peer, reply)

    def send(self, peer: bytes, msg: wire.Message) -> None:
        """Send at once. Dense parameters go out as a copy of the live vector made by ZeroMQ inside this call
        (the next step changes it in place): one copy per send, where a snapshot per version plus zero-copy
        sends cost more for the async window of one, where each version is sent once: bench ps measured the loop's
        CPU per dense update at 2.1 ms this way, 3.1 ms with snapshots."""
        live = isinstance(msg, (wire.Params, wire.Ack)) and msg.payload.arrays.get("values") is self.params
        self.sock.send([peer, *wire.encode(msg)], copy=live)

    def refuse(self, peer: bytes, exc: wire.WireError) -> wire.Error:
        self.counters.errors[exc.code] += 1
        self.throttle.warning(f"error:{exc.code}", "refused a message from %s: %s (%d %s so far)",
                              self.peer_name(peer), exc, self.counters.errors[exc.code], exc.code)
        return wire.Error(exc.code, exc.detail)

    def peer_name(self, peer: bytes) -> str:
        named = next((s.name for s in self.sessions.values() if s.peer == peer), None)
        return repr(named) if named else f"connection {peer.hex()}"

    def dispatch(self, peer: bytes, name: str, msg: wire.Message, now: float) -> wire.Message | None:
        """`name`: the worker the connection's key proves it is."""
        if isinstance(msg, wire.Ping):
            c = self.counters
            return wire.Pong(self.version, c.accepted, c.rejected, sum(c.errors.values()))
        if isinstance(msg, wire.Hello):
            if msg.name != name or name == HEALTH_NAME:
                raise wire.WireError("wrong_identity", f"HELLO as {msg.name[:64]!r} on a connection whose key is "
                                                       f"registered for {name!r}")
            return self.hello(peer, msg, now)
        if isinstance(msg, (wire.Pull, wire.Push, wire.Bye)):
            sess = self.session_of(peer, msg.session)
            if isinstance(msg, wire.Pull):
                return self.params_message(sess, now)
            if isinstance(msg, wire.Push):
                return self.push(sess, msg, now)
            self.retire(sess, "said BYE")
            return None
        if isinstance(msg, wire.Error):
            return self.training_failed(peer, msg, now)
        raise wire.WireError("unexpected_type", f"the PS does not take {type(msg).__name__.upper()} messages")

    # ---- sessions ----------------------------------------------------------------------------------------

    def hello(self, peer: bytes, msg: wire.Hello, now: float) -> wire.Welcome:
        if not hmac.compare_digest(msg.token.encode(), self.token):
            raise wire.WireError("bad_token", "HELLO with a wrong run token")
        if msg.name in self.by_name:
            self.retire(self.sessions[self.by_name[msg.name]], "said HELLO again")
        session = secrets.randbits(63) | 1
        # adaptive: dense parameters until the worker asks for something else in its first PUSH
        down = (DENSE, 1.0) if self.adaptive else (self.down_codec, self.ratio)
        self.sessions[session] = Session(session, msg.name, msg.index, peer, down_codec=down[0], down_ratio=down[1])
        self.by_name[msg.name] = session
        if self.t0 is None:
            self.start_clock(now)
        self.log.info("worker %r (index %d) joined: session %016x", msg.name, msg.index, session)
        return wire.Welcome(session, self.numel, self.model_digest, self.config_digest, stop=self.ended is not None)

    def start_clock(self, now: float) -> None:
        """Run time is the controller's (its `elapsed_s`), so curves, budgets and time_to_target_s count from
        the run's start, and a resumed PS continues the same clock."""
        elapsed = self.run_elapsed()
        self.t0 = now - (elapsed or 0.0)
        self.log.info("run clock at %.1f s (%s)", elapsed or 0.0, "the controller's" if elapsed is not None
                      else "no controller clock: counting from the first HELLO")

    def run_time(self, now: float) -> float:
        return 0.0 if self.t0 is None else now - self.t0

    def session_of(self, peer: bytes, session: int) -> Session:
        sess = self.sessions.get(session)
        if sess is None:
            raise wire.WireError("unknown_session", f"no session {session:016x} (the PS restarted?): say HELLO")
        if sess.peer != peer:
            raise wire.WireError("session_mismatch", f"session {session:016x} belongs to another connection")
        return sess

    def cut_off(self, peer: bytes, frame: zmq.Frame, why: wire.WireError) -> None:
        """A message past the bounds: ZeroMQ held all of it before the PS saw its first frame (it delivers a
        multipart message whole), so the sender is not given a second one. Its key is banned (it must register
        again, with a new key) and its connection closed: shut down under ZeroMQ, which then drops it."""
        user = frame.get("User-Id")
        name = self.registry.name_of(user)
        if user:
            self.registry.ban(user)
        self.close_sessions_of(peer, f"message past the bounds ({why.code})")
        try:
            with socket.fromfd(frame.get(zmq.SRCFD), socket.AF_INET, socket.SOCK_STREAM) as dup:  # ZeroMQ keeps its fd
                dup.shutdown(socket.SHUT_RDWR)
        except (OSError, zmq.ZMQError) as exc:
            self.log.warning("could not close the connection of %r: %s", name, exc)
        self.log.warning("worker %r sent a message past the bounds (%s): key banned, connection closed", name, why)

    def close_sessions_of(self, peer: bytes, why: str) -> None:
        for sess in [s for s in self.sessions.values() if s.peer == peer]:
            self.retire(sess, why)

    def retire(self, sess: Session, why: str) -> None:
        self.sessions.pop(sess.id, None)
        if self.by_name.get(sess.name) == sess.id:
            del self.by_name[sess.name]
        self.protocol.forget(sess.id)
        self.log.info("worker %r: session %016x closed (%s)", sess.name, sess.id, why)

    def training_failed(self, peer: bytes, msg: wire.Error, now: float) -> wire.Params:
        """A worker's report that its own training cannot go on (ml/divergence.py): the run ends `failed` with
        its words, since every worker trains the same model with the same settings. Answered with STOP."""
        sess = next((s for s in self.sessions.values() if s.peer == peer), None)
        if sess is None:
            raise wire.WireError("unknown_session", "ERROR from a connection that has no session: say HELLO")
        if msg.code != "training_failed":
            raise wire.WireError("unexpected_type", f"the PS takes ERROR only as training_failed, not {msg.code}")
        text = " ".join(msg.text.split())[:MAX_REPORT_TEXT]  # one line in the log and the row, whatever was sent
        self.log.error("worker %r reports: %s", sess.name, text)
        self.finish(f"failed: worker {sess.name!r} {text}", now)
        return self.params_message(sess, now)

    def everyone_told(self) -> bool:
        return all(s.told_stop for s in self.sessions.values())

    # ---- parameters out ----------------------------------------------------------------------------------

    def parameters_for(self, sess: Session, now: float) -> tuple[Encoded, bool]:
        """(payload, is a delta) that bring this worker to the current version; records what was sent."""
        payload, delta = None, False
        diverged = self.ended is not None and not all_finite(self.params)  # checked only once the run is over
        if sess.down_codec != DENSE and sess.replica is not None and not diverged:
            try:
                payload = encode(self.params - sess.replica, sess.down_codec, sess.down_ratio)
                wire.apply_parameters(sess.replica, payload, delta=True)
                delta = True
            except ValueError as exc:  # fp16 overflow of a large delta: dense instead
                self.throttle.warning(f"dense:{sess.id}", "worker %r gets dense parameters: %s", sess.name, exc)
                payload = None
        if payload is None:
            # After a diverged end the wire cannot carry NaN / Inf: the parameters that go out with STOP are made
            # finite (NaN -> 0, Inf -> the float32 limit); a worker told STOP does not train on them.
            values = torch.nan_to_num(self.params) if diverged else self.params  # live: copied as sent (`send`)
            payload = Encoded(DENSE, self.numel, {"values": values})
            if self.keeps_replicas:
                sess.replica = values.clone()
        sess.sent_version, sess.sent_at = self.version, now
        if self.ended is None:
            self.protocol.expect(sess.id)
        else:
            sess.told_stop = True
        return payload, delta

    def params_message(self, sess: Session, now: float) -> wire.Params:
        payload, delta = self.parameters_for(sess, now)
        return wire.Params(self.version, payload, delta, stop=self.ended is not None)

    def ack(self, sess: Session, accepted: bool, s: int, now: float, received: float | None = None) -> wire.Ack:
        """`received`: when the PUSH this answers arrived (default `now`): the ACK says how long the PS held it."""
        payload, delta = self.parameters_for(sess, now)
        held = max(0.0, time.monotonic() - (now if received is None else received))
        return wire.Ack(self.version, accepted, s, payload, delta, stop=self.ended is not None, held_s=held)

    # ---- updates in -------------------------------------------------------------------------------------

    def push(self, sess: Session, msg: wire.Push, now: float) -> wire.Ack | None:
        if not self.adaptive and msg.update.codec != self.codec:
            raise wire.WireError("wrong_codec", f"update in codec {msg.update.codec}; this run uses {self.codec}")
        min_ratio = self.ml.compression.min_ratio
        if self.adaptive and "ratio" in settings_of(msg.down_codec) and msg.down_ratio < min_ratio:
            raise wire.WireError("wrong_codec", f"downlink {msg.down_codec} ratio {msg.down_ratio:g} asked for, below "
                                                f"compression.min_ratio {min_ratio:g}")
        try:
            s = staleness(self.version, msg.base_version)
        except ValueError as exc:
            raise wire.WireError("bad_version", str(exc)) from None
        if self.adaptive:  # a valid request: this and later answers carry the parameters as the worker asked
            sess.down_codec, sess.down_ratio = msg.down_codec, msg.down_ratio
            if self.decisions is not None:
                self.decisions.record(self.run_time(now), sess.name, msg)
        self.counters.staleness[s] += 1
        if self.ended is not None:
            return self.ack(sess, False, s, now)
        round_s = now - sess.sent_at if msg.base_version == sess.sent_version else None
        admission: Admission = self.protocol.admit(sess.id, s, round_s)
        if admission.note is not None:
            self.throttle.info(f"bound:{sess.id}", "worker %r: %s", sess.name, admission.note)
        if admission.refused is not None:
            return self.reject(sess, s, now, admission.refused, admission.detail)
        row = self.row(sess, s, msg, now)
        if row is None:
            return self.ack(sess, False, s, now)
        self.count_accepted(sess, s, admission.bound)
        self.protocol.add(sess.id, row, now)
        if self.protocol.due(now):
            self.close_window(now)
        if self.protocol.holds_acks:
            return None  # the ACK goes out when the round closes (close_window)
        return self.ack(sess, True, s, now)

    def row(self, sess: Session, s: int, msg: wire.Push, now: float) -> Row | None:
        """The update decoded (codec none: the received frame itself, no copy), or None when its norm is above
        the bound (refused and counted)."""
        update = msg.update.arrays["values"] if msg.update.codec == DENSE else decode(msg.update)
        norm = update_norm(update)
        if norm > self.max_norm:
            self.count_refused(sess, "norm", f"L2 norm {norm:.4g} > ml.max_update_norm {self.max_norm:.4g}")
            return None
        return Row(sess.id, s, update, msg.train_loss, now)

    def count_accepted(self, sess: Session, s: int, bound: int | None) -> None:
        self.counters.accepted += 1
        self.counters.staleness_sum += s
        self.throttle.info(f"update:{sess.id}", "update from %r accepted: staleness %d%s, version %d", sess.name, s,
                           "" if bound is None else f" (bound {bound})", self.version)

    def reject(self, sess: Session, s: int, now: float, reason: str, detail: str) -> wire.Ack:
        self.count_refused(sess, reason, detail)
        return self.ack(sess, False, s, now)

    def count_refused(self, sess: Session, reason: str, detail: str) -> None:
        c = self.counters
        c.rejected += 1
        c.refused[reason] += 1
        log = self.throttle.warning if reason == "norm" else self.throttle.info
        log(f"refuse:{reason}:{sess.id}", "update from %r refused (%s): %s; fresh parameters (version %d) sent; "
            "%d refused for %s so far", sess.name, reason, detail, self.version, c.refused[reason], reason)

    def close_window(self, now: float) -> None:
        """Step over the protocol's window; sync: log the round and send the ACKs it held."""
        closed = self.protocol.close(now, self.version + 1)
        self.step([row for _, row in closed.pairs], now)
        if not self.protocol.holds_acks:
            return
        names = sorted(self.sessions[s].name for s in closed.stragglers if s in self.sessions)
        self.throttle.info("round", "round of version %d closed %.2f s after its first update: %d updates%s",
                           self.version - 1, closed.took_s, len(closed.pairs),
                           f"; stragglers dropped: {', '.join(names)}" if names else "")
        for session, row in closed.pairs:
            sess = self.sessions.get(session)
            if sess is not None:
                self.send(sess.peer, self.ack(sess, True, 0, now, row.received))

    def step(self, rows: list[Row], now: float) -> None:
        value = combine([r.update for r in rows], [r.staleness for r in rows], self.ml, self.noise)
        self.optimizer.step(self.params, value)
        self.version += 1
        if not all_finite(self.params):  # finite updates can still overflow the parameters
            self.finish(f"failed: the parameters are NaN or Inf after the step to version {self.version} (the model "
                        f"diverged)", now)
            return
        self.counters.tokens += len(rows) * self.tokens_per_update
        budget = self.ml.budget
        evaluated = (self.version % budget.eval_every == 0
                     or self.run_time(now) - self.last_eval_t >= budget.eval_every_s)
        self.protocol.stepped(now, self.version)
        self.recent_train.append(sum(r.train_loss for r in rows) / len(rows))
        if self.curve is not None:
            self.curve.version(self.curve_row(now), "slice" if evaluated else None)
        if evaluated:
            self.submit_evaluation(now)
        if self.version % budget.checkpoint_every == 0:
            self.save_checkpoint()
        spent = self.budget_spent()
        if spent is not None:
            self.finish(f"budget: {spent} reached at version {self.version}{self.short_of_target()}", now)

    def budget_spent(self) -> str | None:
        """Which work budget is spent (max_tokens, max_versions), or None."""
        budget, c = self.ml.budget, self.counters
        if budget.max_tokens is not None and c.tokens >= budget.max_tokens:
            return f"max_tokens {budget.max_tokens} ({c.tokens} tokens trained)"
        if self.version >= budget.max_versions:
            return f"max_versions {budget.max_versions}"
        return None

    def short_of_target(self) -> str:
        """What an end without the target adds to its reason: how far the slice's loss was."""
        target = self.ml.budget.target_val_loss
        if target is None or self.time_to_target_s is not None:
            return ""
        last = f"{self.last_val[1]:.4f} at version {self.last_val[0]}" if self.last_val else "none yet"
        return f", before target_val_loss {target:g} (last validation slice loss {last})"

    # ---- evaluation, budget, end ---------------------------------------------------------------------

    def curve_row(self, now: float) -> dict:
        c = self.counters
        return {"t_s": round(self.run_time(now), 3), "version": self.version,
                "train_loss": self.recent_train[-1] if self.recent_train else None,
                "updates_accepted": c.accepted, "updates_rejected": c.rejected, "mean_staleness": self.mean_staleness(),
                "bytes_up": self.bytes_up(), "bytes_down": self.bytes_down(), "tokens": c.tokens}

    def evaluate_initial(self) -> None:
        """The first evaluation of a fresh run: version 0 on the slice, the run's initial loss, at t = 0."""
        if self.curve is not None:
            self.curve.version(self.curve_row(0.0), "slice")
        self.eval_times[(0, "slice")] = (0.0, 0)
        self.evaluator.submit(0, self.params.clone())

    def submit_evaluation(self, now: float, on: str = "slice") -> None:
        t = self.run_time(now)
        if on == "slice":
            self.last_eval_t = t
        self.eval_times[(self.version, on)] = (t, self.bytes_up() + self.bytes_down())
        self.evaluator.submit(self.version, self.params.clone(), on)

    def on_evaluation(self, version: int, on: str, loss: float, error: str | None, now: float) -> None:
        t, sent = self.eval_times.pop((version, on), (self.run_time(now), self.bytes_up() + self.bytes_down()))
        if self.curve is not None:
            self.curve.val_loss(version, on, loss)
        if error is not None or not math.isfinite(loss):
            why = f"its evaluation failed ({error})" if error else f"its validation loss is {loss} (the model diverged)"
            self.eval_failed = (version, why)
            self.log.error("version %d (%s set): %s", version, on, why)
            if error is None:
                self.finish(f"failed: version {version}: {why}", now)
            return
        train = self.recent_train[-1] if self.recent_train else float("nan")
        self.log.info("eval version %d: val_loss %.4f on the %s set (train %.4f) at t=%.1f s", version, loss, on,
                      train, t)
        if on == "final":
            self.final_val = (version, loss)
            return
        if self.initial_val_loss is None:
            self.initial_val_loss = loss
        self.last_val = (version, loss)
        target = self.ml.budget.target_val_loss
        if target is not None and loss <= target and self.time_to_target_s is None:
            self.time_to_target_s, self.bytes_to_target = t, sent
            reached = f"target_val_loss {target:g} reached at version {version} ({loss:.4f})"
            if self.ended is not None and not self.ended.startswith("failed"):
                # A slice evaluation still pending when the budget or the cap ended the run (finish waits
                # for it): the run's model did reach the target, and the row's reason says so with its figures.
                self.ended = f"{self.ended}; then the pending evaluation of the slice: {reached}"
                self.log.info("run over: %s", self.ended)
            self.finish(reached, now)

    def finish(self, reason: str, now: float) -> None:
        """End the run: STOP to everyone from now on, a last evaluation, checkpoint, the `done` report."""
        if self.ended is not None:
            return
        self.ended = reason
        self.log.info("run over: %s", reason)
        for session, row in self.protocol.drop(self.version):  # sync: workers waiting on an open round
            sess = self.sessions.get(session)
            if sess is not None:
                self.send(sess.peer, self.ack(sess, False, 0, now, row.received))
        if self.curve is not None:
            self.curve.version(self.curve_row(now), "final")
        self.submit_evaluation(now, "final")
        for version, on, loss, error in self.evaluator.results(wait=True):
            self.on_evaluation(version, on, loss, error, now)
        if not self.final_val_known() and not self.ended.startswith("failed"):
            version, why = self.eval_failed  # results come in order: this is the final version's
            self.ended = f"failed: final version {version}: {why}; the run had ended: {reason}"
            self.log.error("run over: %s", self.ended)
        self.save_checkpoint()
        self.close_files()
        self.log_totals()
        if self.reporter is not None:
            self.reporter.final(self.report_body(done=True))
        self.linger_until = time.monotonic() + LINGER_S

    def shutdown(self) -> None:
        """SIGTERM: keep what the run has (checkpoint, files, a report without `done`) and leave."""
        self.log.info("stopping at version %d (signal)", self.version)
        if self.ended is None:
            self.save_checkpoint()
            self.close_files()
            if self.reporter is not None:
                self.reporter.final(self.report_body(done=False))

    def close_files(self) -> None:
        if self.curve is not None:
            self.curve.staleness(dict(self.counters.staleness))
            self.curve.close()
            self.curve = None
        if self.decisions is not None:
            self.decisions.close()
            self.decisions = None

    def log_totals(self) -> None:
        c = self.counters
        self.log.info("totals: version %d, %d accepted, %d refused (%s), mean staleness %.2f, %.1f MB up, %.1f MB "
                      "down, wire errors %s", self.version, c.accepted, c.rejected, dict(c.refused) or "none",
                      self.mean_staleness(), self.bytes_up() / 1e6, self.bytes_down() / 1e6, dict(c.errors) or "none")
        for sess in self.sessions.values():
            sent, received = self.sock.by_peer.get(sess.peer, (0, 0))
            self.log.info("worker %r: %.1f MB up, %.1f MB down", sess.name, received / 1e6, sent / 1e6)

    # ---- figures -----------------------------------------------------------------------------------------

    def mean_staleness(self) -> float:
        c = self.counters
        return c.staleness_sum / c.accepted if c.accepted else 0.0

    def bytes_up(self) -> int:
        return self.counters.bytes_up + self.sock.received

    def bytes_down(self) -> int:
        return self.counters.bytes_down + self.sock.sent

    def final_val_known(self) -> bool:
        return self.final_val is not None and self.final_val[0] == self.version

    def report_body(self, done: bool) -> dict:
        """The report to the controller. `final_val_loss`: the latest slice loss while the run goes on; in the
        `done` report only the final evaluation's loss of the final version (None when it failed)."""
        c = self.counters
        if done:
            final_val = self.final_val[1] if self.final_val_known() else None
        else:
            final_val = self.last_val[1] if self.last_val else None
        return {
            "version": self.version, "updates_accepted": c.accepted, "updates_rejected": c.rejected,
            "updates_refused": dict(c.refused), "wire_errors": dict(c.errors),
            "mean_staleness": self.mean_staleness(), "bytes_up": self.bytes_up(), "bytes_down": self.bytes_down(),
            "initial_val_loss": self.initial_val_loss, "final_val_loss": final_val,
            "final_train_loss": sum(self.recent_train) / len(self.recent_train) if self.recent_train else None,
            "time_to_target_s": self.time_to_target_s, "bytes_to_target": self.bytes_to_target,
            "tokens_trained": c.tokens, "window": self.window_size, "done": done,
            "reason": self.ended,
        }
