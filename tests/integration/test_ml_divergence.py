"""Poisoned and diverged runs end with a truthful row, on loopback with the real controller, PS and workers
(configs/ml_ci.yaml, 3 workers; the poisoner's PUSH goes in with a staleness bound that cannot refuse it
first). Measured before the fix: a token holder's one PUSH of 3e38 per coordinate
(finite, so the wire passes it) stopped the PS from advancing, and the row read `finished` with the
validation loss of an older version.

Now: that PUSH is refused by the norm bound and counted, and the run ends as it would have; with the bound
raised out of its way it overflows the model and the run ends `failed` within seconds. A worker whose own
training diverges (server lr x1e6, inner lr x1e6 with local steps, or a loss that overflows) reports it and
the run ends `failed` with its words within seconds of it, instead of idling to its 90 s budget."""

import json
import re
import time
from datetime import datetime

import pytest
import torch
from ml_support import Probe, ml_run, number, row_of, wait_for_version

from dist_llm_train import wire
from dist_llm_train.ml.codecs import encode

NUMEL = 49_920  # ml_ci.yaml's model
POISON = 3e38


def poison(run, probe: Probe) -> wire.Ack:
    """HELLO with the run token, PULL, then PUSH 3e38 per coordinate against the version pulled."""
    welcome = probe.ask(wire.encode(wire.Hello(run.env["RUN_TOKEN"], "poisoner", 99)))
    params = probe.ask(wire.encode(wire.Pull(welcome.session)))
    update = encode(torch.full((NUMEL,), POISON), "none", 1.0)
    answer = probe.ask(wire.encode(wire.Push(welcome.session, params.version, update, 2.0, 0.1, 16)))
    assert isinstance(answer, wire.Ack), answer
    return answer


def ps_report(run, final) -> dict:
    return json.loads((run.runs_dir / final["run"]["id"] / "run.json").read_text())["ps_report"]


def test_a_poisoned_push_is_refused_and_the_run_ends_on_its_own_terms(tmp_path, process_log):
    with ml_run(tmp_path, process_log, {"ml.budget.max_versions": 300, "ml.staleness.bound": 1000}) as run:
        run.start()
        wait_for_version(run, 20, 120)
        probe = Probe(run, NUMEL, name="poisoner")
        answer = poison(run, probe)
        probe.close()
        final = run.wait_end(120)
        row, report = row_of(run, final), ps_report(run, final)
    log = open(process_log.name).read()

    assert not answer.accepted and not answer.stop
    assert row["status"] == "finished" and row["reason"] == "budget: max_versions 300 reached at version 300", row
    assert report["updates_refused"].get("norm") == 1  # the poison, and not one honest update
    assert int(row["updates_rejected"]) >= 1 and report["version"] == 300
    assert number(row, "final_val_loss") < number(row, "initial_val_loss") - 1.5, row
    assert "refused (norm): L2 norm 6.703e+40 > ml.max_update_norm 2234" in log


def test_a_poisoned_push_past_a_raised_bound_fails_the_run_within_seconds(tmp_path, process_log):
    overrides = {"ml.max_update_norm": 1.5e42, "ml.staleness.bound": 1000, "ml.budget.max_versions": 10**6}
    with ml_run(tmp_path, process_log, overrides) as run:
        run.start()
        wait_for_version(run, 20, 120)
        probe = Probe(run, NUMEL, name="poisoner")
        answer = poison(run, probe)
        pushed = time.monotonic()
        probe.close()
        final = run.wait_end(60)
        took = time.monotonic() - pushed
        row = row_of(run, final)
        exits = run.wait_workers_exit(30)
        run.ps.wait(timeout=30)

    assert answer.accepted
    # The PS's check after the step or a worker's own check, whichever sees the overflow first.
    assert row["status"] == "failed", row
    assert re.match(r"failed: (the parameters are NaN or Inf after the step to version \d+|worker '[^']+' diverged "
                    r"at version \d+: )", row["reason"]), row
    assert took < 15, took
    assert exits == {0: 0, 1: 0, 2: 0} and run.ps.returncode == 0


@pytest.mark.parametrize(("overrides", "why"), [
    ({"ml.optimizer.lr": 5e5}, r"update norm \S+ is above ml.max_update_norm 2234"),  # x1e6: finite, but huge
    ({"ml.local.steps": 5, "ml.local.inner_lr": 1e3}, r"update norm \S+ is above ml.max_update_norm 2234"),
    ({"ml.optimizer.lr": 5.5e36}, r"training loss is (inf|nan)"),  # the forward pass overflows
], ids=["server-lr-x1e6", "inner-lr-x1e6", "loss-overflows"])
def test_a_worker_that_diverges_ends_the_run_failed_within_seconds(tmp_path, process_log, overrides, why):
    with ml_run(tmp_path, process_log, {**overrides, "ml.budget.max_versions": 10**6}) as run:
        run.start()
        final = run.wait_end(120)
        row = row_of(run, final)
        exits = run.wait_workers_exit(30)
        run.ps.wait(timeout=30)

    log = open(process_log.name).read()

    assert row["status"] == "failed", row
    assert re.match(rf"failed: worker '[^']+' diverged at version \d+: {why}$", row["reason"]), row
    # from the first worker's divergence to the row (start-up is not counted: it takes 50 s on a loaded host)
    assert seconds_between(log, "training diverged at version", "running -> failed") < 5
    assert exits == {0: 0, 1: 0, 2: 0} and run.ps.returncode == 0


def seconds_between(log: str, first: str, then: str) -> float:
    """Seconds from the first log line holding `first` to the first one holding `then` (logging's asctime)."""
    def when(text: str) -> datetime:
        line = next(line for line in log.splitlines() if text in line)
        return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
    return (when(then) - when(first)).total_seconds()
