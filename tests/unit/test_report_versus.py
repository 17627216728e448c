"""The report's side-by-side section (experiments/report.py, "builtin protocols against hivemind"): recipes by
trainer, bytes per token from the interface counters, the fastest recipe of each trainer per profile, the plot."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image

from dist_llm_train.experiments.report import build_report
from dist_llm_train.experiments.runner import OK_STATUS
from dist_llm_train.results import write_run


def config(steps: int) -> dict:
    return {"ml": {"data": {"batch_size": 32, "seq_len": 128}, "local": {"steps": steps}}}


def row(run_id, trainer, protocol, codec, ttt, up, status=OK_STATUS):
    return {"run_id": run_id, "mode": "ml", "config": "ml_sync", "profile": "lan", "trainer": trainer,
            "protocol": protocol, "codec": codec, "aggregation": "mean", "status": status, "window": 4,
            "num_workers": 4, "time_to_target_s": ttt, "final_val_loss": 2.49, "compute_utilization": 0.5,
            "iface_bytes_up": up, "iface_bytes_down": 2 * up, "started_at": run_id}


def add(runs: Path, r: dict, steps: int, versions: int) -> None:
    write_run(runs, r["run_id"], r, {"config": config(steps), "ps_report": {"version": versions}})
    (runs / r["run_id"] / "curve.csv").write_text("t_s,version,train_loss,val_loss\n0,0,,5.5\n50,10,,3.0\n100,20,,2.4\n")
    (runs / r["run_id"] / "interfaces.csv").write_text(
        "t_s,worker_tx_bytes,worker_rx_bytes,ps_tx_bytes,ps_rx_bytes\n0,0,0,0,0\n100,1000000,2000000,0,0\n")


def test_recipes_side_by_side_with_bytes_per_token_and_the_best_of_each(tmp_path):
    runs = tmp_path / "runs"
    tokens = 100 * 4 * 32 * 128  # 100 versions of a window of 4 batches of 32 x 128
    add(runs, row("20261207T000001Z-a-1", "builtin", "sync", "none", 100.0, tokens * 10), 1, 100)
    add(runs, row("20261207T000002Z-b-1", "builtin", "sync", "int8", 80.0, tokens), 50, 2)  # H = 50: 2 versions
    add(runs, row("20261207T000003Z-c-1", "hivemind", "sync", "none", 200.0, tokens * 20), 1, 100)
    add(runs, row("20261207T000004Z-d-1", "hivemind", "sync", "int8", None, tokens), 50, 2)  # never reached
    report = build_report(runs, runs / "report", "report")

    table = {r[1]: r for r in report.versus.table}
    assert list(table) == ["builtin sync none", "builtin sync int8 H=50", "hivemind sync none", "hivemind sync int8 H=50"]
    assert table["builtin sync none"][3:6] == ["100.0", "10.0", "20.0"]  # bytes up and down per token
    assert table["builtin sync int8 H=50"][4] == "1.0"  # 2 versions x 4 x 32 x 128 x 50 tokens
    assert table["hivemind sync int8 H=50"][3] == "not reached"
    assert report.versus.best == [["lan", "builtin sync int8 H=50", "80.0", "hivemind sync none", "200.0", "0.40"]]
    assert "versus_hivemind.png" in {p.file for p in report.plots}
    assert matplotlib.image.imread(runs / "report" / "versus_hivemind.png").shape[0] > 100
    markdown = (runs / "report" / "results.md").read_text()
    assert "## Builtin protocols against hivemind" in markdown and "| lan | builtin sync int8 H=50 | 80.0 |" in markdown
    page = (runs / "report" / "index.html").read_text()
    assert '<h2 id="h-versus">Builtin protocols against hivemind</h2>' in page
    assert "<td class=text>builtin sync int8 H=50</td><td>80.0</td>" in page


def test_no_section_without_a_hivemind_row(tmp_path):
    runs = tmp_path / "runs"
    add(runs, row("20261207T000001Z-a-1", "builtin", "sync", "none", 100.0, 10), 1, 100)
    report = build_report(runs, runs / "report", "report")
    assert report.versus is None and "against hivemind" not in (runs / "report" / "results.md").read_text()
    assert "against hivemind" not in (runs / "report" / "index.html").read_text()
