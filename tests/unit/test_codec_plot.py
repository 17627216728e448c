"""The report's adaptive-compression plot: drawn from each adaptive run's codec_decisions.csv, absent otherwise."""

from __future__ import annotations

import matplotlib.image

from dist_llm_train.experiments.codec_plot import FILE, plot_codec_decisions, read_decisions
from dist_llm_train.experiments.report import build_report
from dist_llm_train.results import write_run
from test_report import ml_row, write_curve

DECISIONS = """t_s,worker,link_mbit,rtt_ms,compute_s,codec,ratio,bytes,down_codec,down_ratio
0.5,w0,,,0.5,topk,0.001,5628,topk,0.001
1.0,w0,950,2,0.5,none,1,3752960,none,1
1.2,w1,18.5,90,0.5,topk,0.1,562944,topk,0.1
1.9,w1,25,90,0.5,topk,0.15,844416,topk,0.15
2.0,w1,30"""  # a torn last line (the run was killed): skipped


def test_report_draws_bytes_and_link_per_worker_of_adaptive_runs(tmp_path):
    runs = tmp_path / "runs"
    for row in (ml_row("a1", "federation", "async", codec="adaptive"), ml_row("f1", "federation", "async")):
        write_run(runs, row["run_id"], row, {})
        write_curve(runs, row["run_id"], 3.0)
    (runs / "a1" / "codec_decisions.csv").write_text(DECISIONS)

    report = build_report(runs, runs / "report", "report")

    assert FILE in [p.file for p in report.plots]
    height, width, _ = matplotlib.image.imread(runs / "report" / FILE).shape
    assert height > 200 and width > 400
    assert read_decisions(runs / "a1" / "codec_decisions.csv") == {
        "w0": [(0.5, 5628, None), (1.0, 3752960, 950.0)], "w1": [(1.2, 562944, 18.5), (1.9, 844416, 25.0)]}


def test_no_decisions_no_plot(tmp_path):
    assert plot_codec_decisions([("x", tmp_path / "missing.csv")], tmp_path) is None
    assert not (tmp_path / FILE).exists()
