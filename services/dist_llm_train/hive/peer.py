"""A worker of an `ml.trainer: hivemind` run: one hivemind.Optimizer peer training its shard until the run is over.

`run_shard(agent, task)` replaces worker/ml_loop.py's trainer for such runs. It builds what the builtin worker
builds, from the same config: the model (`ml/model.py`, the run's seed: every peer starts from the same
parameters), shard `task["shard"]` of `task["num_shards"]` of the training text and its batches (same sampler
seed), then joins the collaboration:

    DHT     listens on 0.0.0.0:identity.PORT + 1 + index, announces this container's own address (its compose network
            address, so other peers dial it through the emulated links), and bootstraps from the PS
            container's peer, whose id every worker derives from the run token and run id (hive/identity.py)
    step    loss of one batch -> backward -> hivemind.Optimizer.step(): the recipe of hive/recipe.py
            (gradient averaging each target batch, or local Adam steps with parameter averaging every H)

Worker 0 also keeps the run's books, as the PS does for builtin runs (`RunBooks`): the validation loss of its
parameters (the collaboration's, right after an averaging) at epoch 0 and every `budget.eval_every` epochs, on
the PS's validation slice, and once at the end on the PS's final set (final_val_loss), in a thread of its own (ps/evaluation.py), `runs/<run_id>/curve.csv`, the
report to the controller (`POST /ps/report`) and the end of the run at `target_val_loss`, `max_versions`
(epochs) or `max_time_s` on the controller's clock.

Divergence ends the run `failed`, as in builtin runs (ml/divergence.py), never with a stale `finished` row:
every peer checks each step's training loss and gradient (finite, L2 norm within `ml.max_update_norm`: the
update an H = 1 worker pushes; with H > 1 the same bound on each inner step's gradient) before
hivemind.Optimizer sees it, and its parameters after the step (finite: an averaging or a local step can
overflow them). A peer that diverges stops training and, unless it is worker 0, says why under the DHT key
`<run>_failed` (subkey: its name); worker 0 reads that key every FAILURE_POLL_S (one small DHT lookup,
counted at the interfaces like hivemind's own progress records) and ends the run `failed: worker '<name>'
diverged at version N: <why>`. A non-finite validation loss ends it `failed` too, and the `done` report's
`final_val_loss` is the final epoch's or empty (a final evaluation that fails turns the end into `failed`),
never an older epoch's. A swarm short of a declared worker ends the run the same way, after one wait: the start
barrier (`wait_for_peers`) waits `workers.start_wait_s` for every peer, and a peer that found fewer stops
(`failed: worker '<name>' found 1 of 2 peers in the swarm after workers.start_wait_s = 60 s`); with the netem
sidecar, which has waited that long for every worker's container already, the controller fails a run that would
start without one, so no peer waits a second time. Why worker 0 and not an observer in the PS container: the
parameters live on the peers; an observer would have to download them over the emulated links (3.75 MB for the
default model per evaluation, in the very traffic being measured, or through a side channel no deployment has),
while worker 0 holds them already. Its evaluations cost worker 0 CPU, as the PS's cost the PS's on this shared
host.

Compute utilization: forward and backward seconds (stretched by the worker's speed factor, as ml_loop does) over
wall seconds since the first batch; everything inside hivemind.Optimizer.step (waiting for the swarm,
matchmaking, averaging, the optimizer step) counts as not computing. Bytes are not counted here: the sidecar
counts every container's interface (netem/counters.py) for both trainers.
"""

from __future__ import annotations

import math
import socket
import time
from collections import deque
from functools import partial
from typing import Any

import torch

from ..config import RunConfig
from ..ml.codecs import all_finite
from ..ml.data import BatchSampler, load_corpus, shard, split, validation_batches
from ..ml.divergence import divergence, max_update_norm
from ..ml.model import build_model, count_parameters
from ..ml.train import fair_share, flat_gradient, flat_parameters, loss_of, set_threads
from ..ps.evaluation import Evaluator
from ..ps.report import Curve, Reporter
from ..results import safe_run_id
from ..schema import validate
from ..worker.client import Conflict, ControlError, Unreachable
from . import identity
from .recipe import Recipe, recipe

TELEMETRY_S = 1.0
DHT_RETRY_S = 2.0
DHT_START_S = 120.0  # how long a worker tries to reach the initial peer
RECENT_TRAIN = 20  # final_train_loss: mean over worker 0's last this many steps
FAILURE_POLL_S = 5.0  # how often worker 0 reads the DHT for another peer's divergence
FAILURE_TTL_S = 3600.0  # how long a peer's divergence stays in the DHT
TORCH_OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}


def own_address() -> str:
    """This container's address on the compose network (Docker maps the hostname to it in /etc/hosts)."""
    return socket.gethostbyname(socket.gethostname())


def start_dht(port: int, initial_peers: list[str], identity_path: str | None = None, log=None, wait_s: float = 0.0):
    """A DHT node on every interface at `port`, announcing this container's own address. hivemind's daemon
    refuses to start while no initial peer answers (the PS container may still be starting): retried for `wait_s`."""
    import hivemind

    deadline = time.monotonic() + wait_s
    while True:
        try:
            return hivemind.DHT(start=True, initial_peers=initial_peers or None, identity_path=identity_path,
                                host_maddrs=[f"/ip4/0.0.0.0/tcp/{port}"],
                                announce_maddrs=[f"/ip4/{own_address()}/tcp/{port}"])
        except Exception as exc:  # noqa: BLE001 - hivemind raises its daemon's failure as a plain error
            if time.monotonic() > deadline:
                raise
            if log is not None:
                log.warning("the DHT did not start (%s); trying again", str(exc).splitlines()[0][:200])
            time.sleep(DHT_RETRY_S)


def wait_for_peers(dht, prefix: str, expected: int, timeout_s: float) -> int:
    """A start barrier through the DHT, as the PS's rounds wait for every worker: each peer announces itself
    under `<prefix>_peers` and waits until `expected` have (or `timeout_s`, the run's workers.start_wait_s, has
    passed). Without it the first peers up take their first epochs alone and then spend rounds catching up.
    Returns how many it saw. With the netem sidecar every worker's container was running when the run started
    (the controller fails a hivemind run the sidecar started without one), so this rarely waits long."""
    from hivemind.utils import get_dht_time

    deadline = time.monotonic() + timeout_s
    while True:
        dht.store(f"{prefix}_peers", subkey=str(dht.peer_id), value=True, expiration_time=get_dht_time() + 600)
        found = dht.get(f"{prefix}_peers", latest=True)
        seen = len(found.value) if found is not None else 0
        if seen >= expected or time.monotonic() > deadline:
            return seen
        time.sleep(0.5)


def announce_failure(dht, prefix: str, name: str, why: str) -> None:
    """A peer's divergence, for worker 0 to end the run with (module docstring)."""
    from hivemind.utils import get_dht_time

    dht.store(f"{prefix}_failed", subkey=name, value=why, expiration_time=get_dht_time() + FAILURE_TTL_S)


def failures(dht, prefix: str) -> dict[str, str]:
    """The divergences other peers announced: {peer name: why}."""
    found = dht.get(f"{prefix}_failed", latest=True)
    if found is None or not isinstance(found.value, dict):
        return {}
    return {str(name): str(entry.value) for name, entry in found.value.items()}


def step_divergence(loss: float, model: torch.nn.Module, bound: float) -> str | None:
    """Why this step's loss or gradient shows the training diverged (ml/divergence.py), or None."""
    return divergence(loss, flat_gradient(model), bound)


def build_optimizer(plan: Recipe, dht, model: torch.nn.Module):
    import hivemind
    from hivemind import compression

    codec = getattr(compression, plan.compression)
    return hivemind.Optimizer(
        dht=dht, run_id=plan.run_prefix, target_batch_size=plan.target_batch_size,
        batch_size_per_step=plan.batch_size_per_step, params=model.parameters(),
        optimizer=partial(TORCH_OPTIMIZERS[plan.optimizer], **plan.optimizer_kwargs()),
        use_local_updates=plan.use_local_updates, matchmaking_time=plan.matchmaking_time_s,
        averaging_timeout=plan.averaging_timeout_s, average_state_every=plan.average_state_every,
        grad_compression=codec(), state_averaging_compression=codec(), load_state_compression=codec(),
        verbose=True)


class RunBooks:
    """Worker 0's share of the PS's job in a hivemind run: evaluation, curve, report, budget (module docstring)."""

    def __init__(self, agent: Any, config: RunConfig, run_id: str, model: torch.nn.Module):
        ml = config.ml
        self.agent, self.ml, self.log = agent, ml, agent.log
        self.window = config.workers.count
        _, val = split(load_corpus(ml.data.path, ml.data.seq_len), ml.data.val_fraction, ml.data.seq_len)
        sizes = {"slice": ml.budget.eval_slice_batches, "final": ml.budget.eval_batches}  # as the PS's sets
        self.evaluator = Evaluator(build_model(ml.model, config.seed), {
            name: validation_batches(val, ml.data.batch_size, ml.data.seq_len, n) for name, n in sizes.items()})
        self.curve = Curve(agent.settings.runs_dir / run_id, ml.budget.max_versions)
        client = agent.new_client(give_up_after_s=20)  # worker 0's own secret: its report is the PS's (deps.py)
        self.client = client
        self.reporter = Reporter(lambda body: client.post_json("/ps/report", body), agent.log)
        self.t0 = time.monotonic() - (self.run_elapsed() or 0.0)  # the controller's run clock, as the PS's
        self.eval_times: dict[tuple[int, str], float] = {}
        self.initial: float | None = None
        self.last_val: tuple[int, float] | None = None  # the latest slice evaluation
        self.final_val: tuple[int, float] | None = None  # the final set's, at the end
        self.eval_failed: tuple[int, str] | None = None  # the last evaluation that gave no finite loss, and why
        self.time_to_target_s: float | None = None
        self.recent_train: deque[float] = deque(maxlen=RECENT_TRAIN)
        self.epoch = 0
        self.ended: str | None = None
        self.submit(0, flat_parameters(model))

    def run_elapsed(self) -> float | None:
        try:
            return self.client.get_json("/status")["run"]["elapsed_s"]
        except (ControlError, Unreachable) as exc:
            self.log.warning("no run clock from the controller: %s", exc)
            return None

    def run_time(self) -> float:
        return time.monotonic() - self.t0

    def submit(self, epoch: int, params: torch.Tensor, on: str = "slice") -> None:
        self.eval_times[(epoch, on)] = self.run_time()
        self.curve.version(self.curve_row(epoch), evaluated=on)
        self.evaluator.submit(epoch, params, on=on)

    def curve_row(self, epoch: int) -> dict:
        return {"t_s": round(self.run_time(), 3), "version": epoch,
                "train_loss": self.recent_train[-1] if self.recent_train else None}

    def step(self, train_loss: float, epoch: int, model: torch.nn.Module) -> None:
        """After every local step: the epoch this peer is at now (an averaging may have moved it)."""
        self.recent_train.append(train_loss)
        if epoch != self.epoch and self.ended is None:
            self.epoch = epoch
            if epoch % self.ml.budget.eval_every == 0:
                self.submit(epoch, flat_parameters(model))
            else:
                self.curve.version(self.curve_row(epoch))
        self.collect()
        budget = self.ml.budget
        if self.ended is None and epoch >= budget.max_versions:
            self.ended = f"max_versions {budget.max_versions} reached"
        elif self.ended is None and self.run_time() >= budget.max_time_s:
            self.ended = f"max_time_s {budget.max_time_s:g} s reached at version {epoch}"
        self.reporter.publish(self.body(done=False))

    def fail(self, reason: str) -> None:
        """End the run `failed` (unless it had ended already): the loop stops and `finish` reports it."""
        if self.ended is None:
            self.ended = f"failed: {reason}"
            self.log.error("run over: %s", self.ended)

    def collect(self, wait: bool = False) -> None:
        for epoch, on, loss, error in self.evaluator.results(wait=wait):
            t = self.eval_times.pop((epoch, on), self.run_time())
            self.curve.val_loss(epoch, on, loss)
            if error is not None or not math.isfinite(loss):
                why = (f"its evaluation failed ({error})" if error
                       else f"its validation loss is {loss} (the model diverged)")
                self.eval_failed = (epoch, why)
                self.log.error("version %d: %s", epoch, why)
                if error is None:
                    self.fail(f"version {epoch}: {why}")
                continue
            if on == "final":
                self.final_val = (epoch, loss)
                self.log.info("final evaluation, version %d: val_loss %.4f", epoch, loss)
                continue
            self.initial = loss if self.initial is None else self.initial
            self.last_val = (epoch, loss)
            self.log.info("eval version %d: val_loss %.4f at t=%.1f s", epoch, loss, t)
            target = self.ml.budget.target_val_loss
            if target is not None and loss <= target and self.time_to_target_s is None:
                self.time_to_target_s = t
                if self.ended is None:
                    self.ended = f"target_val_loss {target:g} reached at version {epoch} ({loss:.4f})"

    def finish(self, reason: str, model: torch.nn.Module) -> None:
        """The end (`reason` unless a budget ended the run first): a last evaluation of the parameters now (unless
        this epoch was evaluated), the curve closed, the `done` report (the controller then ends the run)."""
        self.ended = self.ended or reason
        self.submit(self.epoch, flat_parameters(model), on="final")
        self.collect(wait=True)
        if not self.final_val_known() and not self.ended.startswith("failed"):
            epoch, why = self.eval_failed  # results come in order: this is the final epoch's
            self.ended = f"failed: final version {epoch}: {why}; the run had ended: {self.ended}"
        self.log.info("run over: %s", self.ended)
        self.curve.close()
        self.evaluator.close()
        self.reporter.final(self.body(done=True))

    @property
    def over(self) -> bool:
        return self.ended is not None

    def final_val_known(self) -> bool:
        return self.final_val is not None and self.final_val[0] == self.epoch

    def body(self, done: bool) -> dict:
        """As the PS's: `final_val_loss` the latest while the run goes on, in the `done` report only the final
        epoch's (None when its evaluation failed)."""
        if done:
            final_val = self.final_val[1] if self.final_val_known() else None
        else:
            final_val = self.last_val[1] if self.last_val else None
        return {"version": self.epoch, "updates_accepted": None, "updates_rejected": None, "mean_staleness": None,
                "bytes_up": None, "bytes_down": None, "initial_val_loss": self.initial, "final_val_loss": final_val,
                "final_train_loss": sum(self.recent_train) / len(self.recent_train) if self.recent_train else None,
                "time_to_target_s": self.time_to_target_s, "window": self.window, "done": done,
                "reason": self.ended}


class HivemindPeer:
    def __init__(self, agent: Any, task: dict[str, Any]):
        self.agent, self.task, self.log = agent, task, agent.log
        self.worker_id = agent.worker_id
        config = validate(RunConfig, agent.config, "the run config from the controller")
        self.ml = ml = config.ml
        self.run_id = safe_run_id(agent.run_id)
        self.plan = recipe(config, self.run_id)
        set_threads(agent.settings.torch_threads or fair_share(config.workers.count + 1))
        self.model = build_model(ml.model, config.seed)
        train, _ = split(load_corpus(ml.data.path, ml.data.seq_len), ml.data.val_fraction, ml.data.seq_len)
        text = shard(train, task["shard"], task["num_shards"])
        self.batches = BatchSampler(text, ml.data.batch_size, ml.data.seq_len, seed=config.seed * 1009 + task["shard"])
        host = agent.settings.ps_address.removeprefix("tcp://").rpartition(":")[0]
        initial = identity.initial_peer(host, identity.seed(agent.settings.run_token, self.run_id))
        self.dht = start_dht(identity.PORT + 1 + agent.index, [initial], log=self.log, wait_s=DHT_START_S)
        self.opt = build_optimizer(self.plan, self.dht, self.model)
        expected, wait_s = config.workers.count, config.workers.start_wait_s
        seen = wait_for_peers(self.dht, self.plan.run_prefix, expected, wait_s)
        self.log.info("%d of %d peers in the swarm%s", seen, expected, ": training" if seen >= expected else "")
        self.books = RunBooks(agent, config, self.run_id, self.model) if agent.index == 0 else None
        self.max_norm = max_update_norm(ml, count_parameters(self.model))
        self.stopped: str | None = None  # why this peer trains no more (the run goes on until worker 0 ends it)
        if seen < expected:  # a swarm short of a peer trains on, but not as the run config says: not a row
            self.stop(f"found {seen} of {expected} peers in the swarm after workers.start_wait_s = {wait_s:g} s")
        self.polled = time.monotonic()
        self.compute_s = 0.0
        self.first_step: float | None = None
        self.told = 0.0
        self.last_step_s: float | None = None
        self.log.info("hivemind peer %s at %s: shard %d of %d (%d bytes), model %d parameters; %s; initial peer %s",
                      self.dht.peer_id, own_address(), task["shard"], task["num_shards"], len(text),
                      count_parameters(self.model), self.plan, initial)

    def run(self) -> None:
        try:
            while self.agent.holds(self.worker_id) and not (self.books and self.books.over):
                if self.stopped is not None:  # a peer other than worker 0: out of the swarm until the run ends
                    self.agent.stopping.wait(TELEMETRY_S)
                    continue
                self.step()
                self.telemetry()
                self.poll_failures()
        finally:
            if self.books is not None:
                self.books.finish("the controller ended the run", self.model)
            self.opt.shutdown()
            self.dht.shutdown()
        self.telemetry(force=True)
        self.complete()

    def step(self) -> None:
        started = time.perf_counter()
        if self.first_step is None:
            self.first_step = time.monotonic()
            self.agent.started = self.first_step  # utilization counts from the first batch
        x, y = next(self.batches)
        self.model.train()
        loss = loss_of(self.model, x, y)
        loss.backward()
        compute = time.perf_counter() - started
        if self.agent.speed < 1:  # a slower device, emulated without burning the shared CPU (as ml_loop)
            self.agent.stopping.wait((1 / self.agent.speed - 1) * compute)
        self.compute_s += time.perf_counter() - started
        self.agent.compute_s = self.compute_s
        self.tokens_per_sec = self.ml.data.batch_size * self.ml.data.seq_len / compute
        epoch = self.opt.local_epoch
        problem = step_divergence(loss.item(), self.model, self.max_norm)
        if problem is not None:  # never handed to the swarm
            return self.stop(f"diverged at version {epoch}: {problem}")
        self.opt.step()
        self.opt.zero_grad()
        self.last_step_s = time.perf_counter() - started
        if not all_finite(flat_parameters(self.model)):
            return self.stop(f"diverged at version {self.opt.local_epoch}: its parameters are NaN or Inf after "
                             f"the step")
        if self.books is not None:
            self.books.step(loss.item(), self.opt.local_epoch, self.model)

    def stop(self, what: str) -> None:
        """This peer's training cannot go on (it diverged, or the swarm lacks a peer): worker 0 ends the run, another
        peer tells worker 0 through the DHT."""
        self.stopped = what
        self.log.error("this peer %s: %s", what, "ending the run" if self.books else "telling worker 0")
        if self.books is not None:
            self.books.fail(f"worker {self.agent.name!r} {what}")
        else:
            announce_failure(self.dht, self.plan.run_prefix, self.agent.name, what)

    def poll_failures(self) -> None:
        """Worker 0: another peer's announced divergence (or missing peers) ends the run."""
        now = time.monotonic()
        if self.books is None or now - self.polled < FAILURE_POLL_S:
            return
        self.polled = now
        for name, what in sorted(failures(self.dht, self.plan.run_prefix).items()):
            self.books.fail(f"worker {name!r} {what[:400]}")

    def telemetry(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.told < TELEMETRY_S or self.first_step is None:
            return
        self.told = now
        self.agent.send_telemetry(
            tokens_per_sec=self.tokens_per_sec, step_time_s=self.last_step_s, epoch=int(self.batches.epoch),
            batch=self.batches.batches_drawn,
            compute_utilization=min(1.0, self.compute_s / max(1e-9, now - self.first_step)))

    def complete(self) -> None:
        try:
            self.agent.complete(self.task, b"")
        except Conflict:
            self.log.info("run over: shard %d not counted as completed (the run had ended)", self.task["shard"])


def run_shard(agent: Any, task: dict[str, Any]) -> None:
    HivemindPeer(agent, task).run()
