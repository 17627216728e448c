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
OVERRIDES = {"workers.count": 2, "ml.compression.policy": "adaptive", "ml.compression.comm_budget": 2.0,
             "ml.budget.max_versions": 300}


class SlowRelay:
    """Accepts on a loopback port and relays each connection to `upstream`, each direction paced to `mbit`."""

    def __init__(self, upstream: tuple[str, int], mbit: float):
        self.upstream, self.bytes_per_s = upstream, mbit * 1e6 / 8
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.closed = threading.Event()
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self) -> None:
        while not self.closed.is_set():
            try:
                near, _ = self.listener.accept()
            except OSError:
                return
            far = socket.create_connection(self.upstream)
            self.sockets += [near, far]
            for src, dst in ((near, far), (far, near)):
                threading.Thread(target=self.pump, args=(src, dst), daemon=True).start()

    def pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(4096):
                time.sleep(len(data) / self.bytes_per_s)  # a chunk arrives after its serialization time
                dst.sendall(data)
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
            run.start_worker(0)
            direct = run.env["PS_ADDRESS"]
            run.env["PS_ADDRESS"] = f"tcp://127.0.0.1:{relay.port}"  # worker 1 only: spawned with this env
            run.start_worker(1)
            run.env["PS_ADDRESS"] = direct
            final = run.wait_end(150)
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
    assert len(fast) >= 50 and len(slow) >= 5, (len(fast), len(slow))
    # every decision after the first few (the meter settling) is the one the link affords
    assert {d["codec"] for d in fast[3:]} == {"none"}, fast[:10]
    assert {d["codec"] for d in slow} == {"topk"}, slow[:10]
    assert all(float(d["link_mbit"]) < 2 * RELAY_MBIT for d in slow[3:]), slow[:10]
    assert all(float(d["link_mbit"]) > 20 for d in fast[3:]), fast[:10]
    for d in decisions:  # one rate both ways: the worker asks the PS for its own choice on the downlink
        assert d["down_codec"] == d["codec"] and abs(float(d["down_ratio"]) - float(d["ratio"])) <= 1 / 49_920, d
        assert int(d["bytes"]) > 0 and float(d["compute_s"]) > 0
    assert all(float(d["ratio"]) >= 0.001 for d in slow)
