"""compression.policy adaptive end to end on loopback: controller, PS and two workers as real processes; one
worker reaches the PS directly, the other through a rate-limited TCP relay (a real slow link: every byte of its
ZeroMQ connection, CURVE handshake included, crosses it at RELAY_MBIT). Each measures its own link; the slow one
must pick top-k up and down, the fast one dense, both through the real PS, and training must make progress."""

from __future__ import annotations

import csv
import socket
import threading
import time

from ml_support import ml_run, number, row_of

RELAY_MBIT = 0.5
# comm_budget 2: the fast worker (loopback, hundreds of Mbit/s measured) affords dense 200 KB for any compute
# time above a few ms; the slow one (0.5 Mbit/s) affords at most 25 KB per 0.2 s of compute, below int8's 50 KB.
# Sync, and the slow worker started first (the fast one once the slow one's dense parameters, 3 s at 0.5 Mbit/s,
# have crossed the relay): the fast worker cannot run the budget out alone, and its ACKs wait for the slow
# worker's updates: the wait the PS reports (held_s) must not read as a slow link.
OVERRIDES = {"workers.count": 2, "ml.compression.policy": "adaptive", "ml.compression.comm_budget": 2.0,
             "ml.staleness.protocol": "sync", "ml.budget.max_versions": 150, "ml.budget.max_time_s": 150}


class SlowRelay:
    """Accepts on a loopback port and relays each connection to `upstream`, each direction paced to `mbit`."""

    def __init__(self, upstream: tuple[str, int], mbit: float):
        self.upstream, self.bytes_per_s = upstream, mbit * 1e6 / 8
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.closed = threading.Event()
        self.sockets: list[socket.socket] = [self.listener]
        self.delivered = 0  # bytes relayed toward the connecting side (the worker)
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self) -> None:
        while not self.closed.is_set():
            try:
                near, _ = self.listener.accept()
            except OSError:
                return
            try:
                far = socket.create_connection(self.upstream)
            except OSError:  # the PS is not listening yet: refuse, as the PS itself would (ZeroMQ retries)
                near.close()
                continue
            self.sockets += [near, far]
            for src, dst, down in ((near, far, False), (far, near, True)):
                threading.Thread(target=self.pump, args=(src, dst, down), daemon=True).start()

    def pump(self, src: socket.socket, dst: socket.socket, down: bool) -> None:
        try:
            while data := src.recv(4096):
                time.sleep(len(data) / self.bytes_per_s)  # a chunk arrives after its serialization time
                dst.sendall(data)
                self.delivered += len(data) if down else 0
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.closed.set()
        for s in self.sockets:
            s.close()


def test_slow_link_picks_topk_fast_link_dense_and_training_progresses(tmp_path, process_log):
    with ml_run(tmp_path, process_log, OVERRIDES) as run:
        host, port = run.env["PS_ADDRESS"].removeprefix("tcp://").rsplit(":", 1)
        relay = SlowRelay((host, int(port)), RELAY_MBIT)
        try:
            run.start_controller()
            run.ps = run.spawn("ps")
            direct = run.env["PS_ADDRESS"]
            run.env["PS_ADDRESS"] = f"tcp://127.0.0.1:{relay.port}"  # worker 1 only: spawned with this env
            run.start_worker(1)
            run.env["PS_ADDRESS"] = direct
            run.wait_until(lambda: relay.delivered > 4 * 49_920, 60, "the slow worker's dense parameters")
            run.start_worker(0)
            final = run.wait_end(170)
            run.wait_workers_exit(30)
            run.ps.wait(timeout=30)
        finally:
            relay.close()
        row = row_of(run, final)
        decisions = list(csv.DictReader(open(run.runs_dir / final["run"]["id"] / "codec_decisions.csv")))

    assert final["run"]["state"] == "finished", final["run"]
    assert row["codec"] == "adaptive"
    assert number(row, "final_val_loss") < number(row, "initial_val_loss") - 1.5, row
    fast = [d for d in decisions if d["worker"] == "local-worker-0"]
    slow = [d for d in decisions if d["worker"] == "local-worker-1"]
    assert len(fast) >= 50 and len(slow) >= 20, (len(fast), len(slow))
    # every decision after the first few (the meter settling) is the one the link affords
    assert {d["codec"] for d in fast[3:]} == {"none"}, fast[:10]
    assert {d["codec"] for d in slow} == {"topk"}, slow[:10]
    assert all(float(d["link_mbit"]) < 2 * RELAY_MBIT for d in slow[3:]), slow[:10]
    assert all(float(d["link_mbit"]) > 20 for d in fast[3:]), fast[:10]
    for d in decisions:  # one rate both ways: the worker asks the PS for its own choice on the downlink
        assert d["down_codec"] == d["codec"] and abs(float(d["down_ratio"]) - float(d["ratio"])) <= 1 / 49_920, d
        assert int(d["bytes"]) > 0 and float(d["compute_s"]) > 0
    assert all(float(d["ratio"]) >= 0.001 for d in slow)
