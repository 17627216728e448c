"""The report from fixture rows, curves and staleness files: files, PNGs, table rows, README section."""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib.image
import pytest

from dist_llm_train.cli import main as cli_main
from dist_llm_train.experiments.report import (README_BEGIN, README_END, ReportError, build_report, group_rows,
                                               missing_notes, replace_section)
from dist_llm_train.experiments.runner import OK_STATUS
from dist_llm_train.results import read_rows, write_run

PLOTS = ("duration.png", "completion_acceptance.png", "val_loss.png", "val_loss_bytes.png", "to_target.png",
         "utilization.png", "bytes_by_codec.png", "staleness.png")
LINK = {"backend": "userspace", "measured_rtt_ms": 101.0, "measured_loss_pct": 0.5, "measured_mbit": 9.5}


def basic_row(run_id, profile, duration, status=OK_STATUS, completed=40, pending=0, **extra):
    return {"run_id": run_id, "mode": "basic", "config": "basic_demo", "profile": profile, "scheduler": "fifo",
            "status": status, "duration_s": duration, "num_workers": 4, "num_completed_tasks": completed,
            "num_pending_tasks": pending, "started_at": run_id, **LINK, **extra}


def ml_row(run_id, profile, protocol, codec="none", ttt=None, **extra):
    return {"run_id": run_id, "mode": "ml", "config": "ml_demo", "profile": profile, "protocol": protocol,
            "codec": codec, "aggregation": "mean", "status": OK_STATUS, "duration_s": 60.0, "num_workers": 4,
            "updates_accepted": 90, "updates_rejected": 10, "bytes_up": 4_000_000, "bytes_down": 8_000_000,
            "final_val_loss": 2.5, "time_to_target_s": ttt, "bytes_to_target": None if ttt is None else 1e5 * ttt,
            "compute_utilization": 0.5, "tokens_trained": 1_000_000, "seed": 0,
            "reason": "target_val_loss 2.5 reached at version 9 (2.4)" if ttt else "cap: max_time_s 60 s reached",
            "started_at": run_id, **LINK, **extra}


def write_curve(runs: Path, run_id: str, start_loss: float) -> None:
    lines = ["t_s,version,train_loss,val_loss,updates_accepted,updates_rejected,mean_staleness,bytes_up,bytes_down"]
    for i in range(5):
        val = f"{start_loss - 0.2 * i:.2f}" if i % 2 == 0 else ""  # evaluations every other line only
        lines.append(f"{10 * i},{20 * i},{start_loss - 0.1 * i:.2f},{val},{18 * i},{2 * i},1.5,{800 * i},{1600 * i}")
    (runs / run_id / "curve.csv").write_text("\n".join(lines) + "\n")
    (runs / run_id / "staleness.csv").write_text("staleness,count\n0,50\n1,30\n2,20\n")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("report") / "runs"
    for row in (basic_row("b1", "lan", 10.0), basic_row("b2", "lan", 12.0),
                basic_row("b3", "lan", None, status="failed", completed=None, pending=None, reason="stack never healthy"),
                basic_row("b4", "satellite", 30.0, completed=30, pending=10)):
        write_run(runs, row["run_id"], row, {})
    for row in (ml_row("m1", "lan", "sync", ttt=40.0), ml_row("m2", "lan", "async", codec="topk"),
                ml_row("m3", "high_rtt", "sync", ttt=50.0), ml_row("m4", "high_rtt", "sync")):
        write_run(runs, row["run_id"], row, {})
        if row["run_id"] != "m4":
            write_curve(runs, row["run_id"], 3.0)
    return runs


@pytest.fixture(scope="module")
def report(runs):
    """Built once: drawing the five plots takes about two seconds."""
    return build_report(runs, runs / "report", "dist-llm-train report --runs runs")


def table_row(report, profile, config):
    return next(r for r in report.glance if r[1] == profile and r[2] == config)


def test_report_writes_markdown_html_and_every_plot(runs, report):
    out = runs / "report"
    assert (out / "results.md").is_file() and (out / "index.html").is_file()
    assert [p.file for p in report.plots] == list(PLOTS)
    for name in PLOTS:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        height, width, _ = matplotlib.image.imread(out / name).shape
        assert height > 200 and width > 400
    page = (out / "index.html").read_text()
    assert sum(page.count(f'<img src="{name}"') for name in PLOTS) == len(PLOTS)
    assert str(runs) not in page  # images referenced relatively: the folder can be moved


def test_table_rows_hold_the_statistics_of_ok_runs(report):
    by_header = lambda row: dict(zip(("mode", "profile", "config", "runs", "duration", "workers", "completed",
                                      "pending", "acceptance", "val", "ttt", "rtt", "loss", "mbit", "backend"), row))

    lan = by_header(table_row(report, "lan", "basic_demo"))
    satellite = by_header(table_row(report, "satellite", "basic_demo"))
    sync_high = by_header(table_row(report, "high_rtt", "ml_demo protocol=sync codec=none"))
    async_lan = by_header(table_row(report, "lan", "ml_demo protocol=async codec=topk"))

    # 10 and 12: sd 1.414, n 2: t_{0.975, 1} * 1.414 / sqrt(2) = 12.7
    assert (lan["runs"], lan["duration"], lan["completed"], lan["pending"]) == ("2/3", "11.0 ± 12.7", "40.0", "0.0")
    assert (lan["rtt"], lan["loss"], lan["mbit"], lan["backend"], lan["acceptance"]) == ("101.0", "0.50", "9.5", "userspace", "–")
    assert (satellite["duration"], satellite["completed"], satellite["pending"]) == ("30.0", "30.0", "10.0")
    assert (sync_high["runs"], sync_high["acceptance"], sync_high["val"], sync_high["ttt"]) == ("2/2", "90 %", "2.500", "50.0 (1/2)")
    assert async_lan["ttt"] == "–"
    assert (async_lan["completed"], async_lan["pending"]) == ("–", "–")  # tasks are basic mode's
    assert len(report.glance) == 5


def test_markdown_lists_failed_runs_and_what_is_missing(runs, report):
    text = (runs / "report" / "results.md").read_text()
    assert "| b3 | basic | lan | basic_demo | failed | stack never healthy |" in text
    assert "1 of 4 finished ML runs have no curve.csv: m4" in text
    assert "3 of 4 finished ML runs have fewer than 50 curve points (one per version applied): m1 (5), m2 (5)" in text
    assert "dist-llm-train report --runs runs" in text
    for name in PLOTS:
        assert f"]({name})" in text


def test_only_basic_rows_give_only_basic_plots_and_say_so(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs, "b1", basic_row("b1", "lan", 10.0), {})

    report = build_report(runs, runs / "report", "cmd")

    assert [p.file for p in report.plots] == ["duration.png", "completion_acceptance.png"]
    assert not (runs / "report" / "val_loss.png").exists()
    text = (runs / "report" / "results.md").read_text()
    assert "no rows in runs_ml.csv: nothing on ml mode" in text
    assert "val_loss.png" not in text  # no ML rows: said once, not once per ML plot


def test_no_rows_at_all_is_refused(tmp_path):
    with pytest.raises(ReportError, match="no rows in .*runs_basic.csv"):
        build_report(tmp_path, tmp_path / "report", "cmd")


def test_readme_section_is_replaced_through_the_command(tmp_path):
    runs = tmp_path / "runs"
    for row in (basic_row("b1", "lan", 10.0), basic_row("b2", "lan", 12.0)):
        write_run(runs, row["run_id"], row, {})
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nbefore\n{README_BEGIN}\nold table\n{README_END}\nafter\n")

    code = cli_main(["report", "--runs", str(runs), "--readme", str(readme)])

    text = readme.read_text()
    assert code == 0
    assert text.startswith(f"# Title\n\nbefore\n{README_BEGIN}\n") and text.endswith(f"{README_END}\nafter\n")
    assert "old table" not in text
    assert f"dist-llm-train report --runs {runs} --readme {readme}" in text
    assert "| basic | lan | basic_demo | 2/2 | 11.0 ± 12.7 |" in text
    assert (runs / "report" / "index.html").is_file()


@pytest.mark.parametrize("text", ["no markers at all\n", f"{README_END}\nreversed\n{README_BEGIN}\n"])
def test_a_readme_without_markers_is_refused_and_left_alone(text):
    with pytest.raises(ReportError, match="needs the markers"):
        replace_section(text, "table", "README.md")


def test_missing_plots_of_a_mode_with_rows_are_named(tmp_path):
    rows = {"basic": [], "ml": [ml_row("m1", "lan", "sync")]}
    groups = group_rows(rows, tmp_path)

    notes = missing_notes(rows, groups, tmp_path, plots=[])

    assert notes == ["no rows in runs_basic.csv: nothing on basic mode",
                     "1 of 1 finished ML runs have no curve.csv: m1", "1 of 1 finished ML runs have no staleness.csv: m1",
                     "no plot duration.png: no run durations among the finished runs",
                     "no plot completion_acceptance.png: no completed tasks or updates among the finished runs",
                     "no plot val_loss.png: no validation-loss curves among the finished runs",
                     "no plot val_loss_bytes.png: no validation-loss curves with byte counters among the finished runs",
                     "no plot to_target.png: no runs that reached their target among the finished runs",
                     "no plot utilization.png: no compute utilization figures among the finished runs",
                     "no plot bytes_by_codec.png: no byte counters among the finished runs",
                     "no plot staleness.png: no staleness histograms among the finished runs"]


def test_runs_that_differ_beyond_the_row_columns_are_not_averaged_as_repeats(tmp_path):
    runs = tmp_path / "runs"
    config = {"name": "ml_demo", "mode": "ml", "ml": {"aggregation": {"rule": "mean", "f": 0}}}
    other = {"name": "ml_demo", "mode": "ml", "ml": {"aggregation": {"rule": "mean", "f": 1}}}
    for run_id, seed, cfg in (("a1", 0, config), ("a2", 1, config), ("b1", 0, other)):
        write_run(runs, run_id, ml_row(run_id, "lan", "async"), {"config": {**cfg, "seed": seed}})
    rows = {"basic": [], "ml": read_rows(runs / "runs_ml.csv")}

    groups = group_rows(rows, runs)

    assert [len(g.rows) for g in groups] == [2, 1]  # a1 and a2 differ only by seed: repeats
    assert groups[0].label != groups[1].label and all(g.label.startswith("ml_demo #") for g in groups)


def test_the_page_installs_and_keeps_every_file_for_offline_use(runs, report):
    out = runs / "report"
    manifest = json.loads((out / "manifest.webmanifest").read_text())
    worker = (out / "sw.js").read_text()
    page = (out / "index.html").read_text()

    assert manifest["start_url"] == "./index.html" and manifest["display"] == "standalone"
    for icon in manifest["icons"]:
        assert (out / icon["src"]).is_file()
        if icon["type"] == "image/png":
            height, width, _ = matplotlib.image.imread(out / icon["src"]).shape
            assert f"{width}x{height}" == icon["sizes"]
    kept = json.loads(re.search(r"const FILES = (\[.*\]);", worker).group(1))
    assert kept[0] == "./" and {"index.html", "results.md", "chart.js", "report.js", "style.css", *PLOTS} <= set(kept)
    assert all((out / name).is_file() for name in kept[1:])
    assert re.search(r'const CACHE = "dlt-report-[0-9a-f]{16}";', worker)
    for name in ("manifest.webmanifest", "chart.js", "report.js", "style.css"):
        assert f'href="{name}"' in page or f'src="{name}"' in page
    assert "http://" not in page.replace('"http://www.w3.org', "") and "https://" not in page  # nothing from outside


def test_a_new_report_is_a_new_cache(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs, "b1", basic_row("b1", "lan", 10.0), {})
    build_report(runs, runs / "report", "cmd")
    first = (runs / "report" / "sw.js").read_text()
    write_run(runs, "b2", basic_row("b2", "lan", 12.0), {})
    build_report(runs, runs / "report", "cmd")

    assert re.search(r'const CACHE = "(.*)"', first).group(1) != re.search(
        r'const CACHE = "(.*)"', (runs / "report" / "sw.js").read_text()).group(1)


def test_the_charts_data_is_embedded_as_inert_json(runs, report):
    page = (runs / "report" / "index.html").read_text()
    data = json.loads(re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page).group(1))

    assert set(data["val_loss"]) == {"lan", "high_rtt"}
    (run,) = [r for r in data["val_loss"]["lan"] if "(m1)" in r["name"]]
    assert run["time"] == [[0.0, 3.0], [20.0, 2.6], [40.0, 2.2]]  # the evaluated rows of write_curve
    assert run["bytes"] == [[0.0, 3.0], [0.0048, 2.6], [0.0096, 2.2]]  # MB up + down by then
    assert data["staleness"]["sync"] == [[0, 100], [1, 60], [2, 40]]  # m3's and the lan sync run's files


def test_text_from_the_rows_cannot_break_out_of_the_page(tmp_path):
    runs = tmp_path / "runs"
    hostile = "</script><script>alert(1)</script>"
    write_run(runs, "m1", ml_row("m1", hostile, "sync", reason=hostile), {})
    (runs / "m1" / "curve.csv").write_text("t_s,version,val_loss,bytes_up,bytes_down\n0,0,nan,0,0\n1,1,2.5,inf,1\n")

    build_report(runs, runs / "report", "cmd")

    page = (runs / "report" / "index.html").read_text()
    assert "<script>alert" not in page and page.count("</script>") == 3  # chart.js, report.js, the data
    data = json.loads(re.search(r'id="report-data">(.*?)</script>', page).group(1))
    assert data["val_loss"][hostile] == [{"name": "ml_demo (m1)", "time": [[1.0, 2.5]], "bytes": []}]


def test_repeats_give_intervals_comparisons_and_verdicts(tmp_path):
    runs = tmp_path / "runs"
    # three repeats each: async / dense baseline at 30-32 s, sync at 60-62 s (clear), top-k at 29-33 s (not)
    times = {"async": [30.0, 31.0, 32.0], "sync": [60.0, 61.0, 62.0]}
    for protocol, codec, values in (("async", "none", times["async"]), ("sync", "none", times["sync"]),
                                    ("async", "topk", [29.0, 33.0, 31.5])):
        for seed, ttt in enumerate(values):
            run_id = f"{protocol}-{codec}-{seed}"
            write_run(runs, run_id, ml_row(run_id, "lan", protocol, codec, ttt=ttt, seed=seed), {})
    write_run(runs, "late", ml_row("late", "lan", "sync", seed=3), {})  # ended at the cap: not in the statistics

    report = build_report(runs, runs / "report", "cmd")

    compared = {(r[1], r[2]): r for r in report.compared}
    sync = compared[("protocol", "ml_demo protocol=sync codec=none")]
    topk = compared[("codec", "ml_demo protocol=async codec=topk")]
    assert sync[3] == "ml_demo protocol=async codec=none" and sync[4] == "61.0 ± 2.5" and sync[5] == "31.0 ± 2.5"
    assert sync[6].startswith("clear difference (Welch's t, p = 0.000, n = 3 vs 3)")
    assert topk[6].startswith("not separable (Welch's t, p = ") and "n = 3 vs 3" in topk[6]
    assert len(report.compared) == 2  # the baseline is compared with nothing
    work = {r[1]: r for r in report.work}
    assert work["ml_demo protocol=sync codec=none"][2:4] == ["0, 1, 2, 3", "3/0/1/0"]
    assert work["ml_demo protocol=sync codec=none"][5] == "61.0 ± 2.5 (3/4)"
    text = (runs / "report" / "results.md").read_text()
    assert "## ML: comparisons with the baseline" in text and "Welch's t-test" in text
