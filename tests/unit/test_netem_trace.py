"""Trace files: parsing, conversion, the values in force over time, and clear errors for bad files."""

from __future__ import annotations

from pathlib import Path

import pytest

from dist_llm_train.schema import ConfigError
from dist_llm_train.netem.preset import load_preset
from dist_llm_train.netem.trace import PARSERS, TraceError, TraceValues, load, parse_csv, parse_mahimahi

NETEM_DIR = Path(__file__).resolve().parents[2] / "netem"

CSV = """# a comment
t_s,rate_mbit,delay_ms,loss_pct
0,10,40,
2.5,5,,1

4,,60,
6,8,,
"""


def test_csv_empty_cells_keep_the_previous_value_and_the_last_row_ends_the_trace():
    trace = parse_csv(CSV, "x.csv")
    assert trace.starts == (0, 2.5, 4)
    assert trace.values == (TraceValues(10, 40, None), TraceValues(5, 40, 1), TraceValues(5, 60, 1))
    assert trace.length_s == 6 and trace.held == TraceValues(8, 60, 1)
    assert TraceValues(10, 40, None).update() == {"rate_mbit": 10, "delay_ms": 40}


@pytest.mark.parametrize("t, loop, hold", [
    (0, 10, 10), (2.49, 10, 10), (2.5, 5, 5), (5.9, 5, 5), (6, 10, 8), (8.5, 5, 8), (600, 10, 8),
])
def test_values_at_a_time_loop_or_hold_after_the_end(t, loop, hold):
    trace = parse_csv(CSV, "x.csv")
    assert trace.at(t, "loop").rate_mbit == loop
    assert trace.at(t, "hold").rate_mbit == hold


@pytest.mark.parametrize("t, loop, hold", [(0, 2.5, 2.5), (2.5, 4, 4), (4, 6, 6), (5, 6, 6), (6, 8.5, None), (13, 14.5, None)])
def test_next_change_is_the_next_step_boundary(t, loop, hold):
    trace = parse_csv(CSV, "x.csv")
    assert trace.next_change(t, "loop") == loop
    assert trace.next_change(t, "hold") == hold


def test_mean_rate_weights_the_steps_by_time():
    trace = parse_csv(CSV, "x.csv")
    assert trace.mean_rate(2, 3, "loop", None) == pytest.approx(7.5)  # half at 10, half at 5
    assert trace.mean_rate(5.5, 6.5, "hold", None) == pytest.approx(6.5)  # half at 5, half held at 8
    unset = parse_csv("t_s,rate_mbit,delay_ms,loss_pct\n0,,10,\n1,,,\n", "y.csv")
    assert unset.mean_rate(0, 1, "loop", 20) == 20  # no rate in the trace: the preset's
    assert unset.mean_rate(0, 1, "loop", None) is None  # ... and an unlimited preset has none


def test_mahimahi_opportunities_become_a_rate_per_interval():
    # 0-999 ms: 5 opportunities; 1000-1999: none (floored to one); 2000-2500: 2 (the last closes the trace).
    text = "0\n0\n100\n500\n999\n2000\n2500\n"
    trace = parse_mahimahi(text, "x.mahi")
    frame_bits = 1514 * 8
    assert trace.starts == (0, 1, 2) and trace.length_s == 2.5
    assert [v.rate_mbit for v in trace.values] == pytest.approx([5 * frame_bits / 1e6, frame_bits / 1e6,
                                                                 2 * frame_bits / 0.5 / 1e6])
    assert trace.values[0].delay_ms is None and trace.values[0].loss_pct is None
    assert trace.held == trace.values[-1]
    assert parse_mahimahi(text, "x.mahi", interval_ms=500).starts == (0, 0.5, 1, 1.5, 2)


@pytest.mark.parametrize("text, where, words", [
    ("", "x.csv", "empty"),
    ("t_s,rate,delay_ms,loss_pct\n0,1,,\n", "x.csv:1", "the header must be"),
    ("t_s,rate_mbit,delay_ms,loss_pct\n0,1,,\n", "x.csv", "1 row(s)"),
    ("t_s,rate_mbit,delay_ms,loss_pct\n1,1,,\n2,,,\n", "x.csv:2", "first row must be at 0"),
    ("t_s,rate_mbit,delay_ms,loss_pct\n0,1,,\n0,2,,\n", "x.csv:3", "strictly increase"),
    ("t_s,rate_mbit,delay_ms,loss_pct\n0,fast,,\n1,,,\n", "x.csv:2", "rate_mbit: 'fast' is not a number"),
    ("t_s,rate_mbit,delay_ms,loss_pct\n0,nan,,\n1,,,\n", "x.csv:2", "not a finite number"),
    ("t_s,rate_mbit,delay_ms,loss_pct\n0,0,,\n1,,,\n", "x.csv:2", "rate_mbit: 0 is out of range"),
    ("t_s,rate_mbit,delay_ms,loss_pct\n0,1,-5,\n1,,,\n", "x.csv:2", "delay_ms: -5 is out of range"),
    ("t_s,rate_mbit,delay_ms,loss_pct\n0,1,,\n1,,,101\n", "x.csv:3", "loss_pct: 101 is out of range"),
    ("t_s,rate_mbit,delay_ms,loss_pct\n0,1,\n1,,,\n", "x.csv:2", "3 cells, expected 4"),
    ("t_s,rate_mbit,delay_ms,loss_pct\n0,1,,\n,2,,\n", "x.csv:3", "t_s: empty"),
])
def test_bad_csv_traces_name_the_file_and_line(text, where, words):
    with pytest.raises(TraceError) as err:
        parse_csv(text, "x.csv")
    assert str(err.value).startswith(f"{where}:") and words in str(err.value)


@pytest.mark.parametrize("text, where, words", [
    ("", "x.mahi", "no delivery opportunity after 0 ms"),
    ("0\n0\n", "x.mahi", "no delivery opportunity after 0 ms"),
    ("0\n5\nabc\n", "x.mahi:3", "'abc' is not a timestamp"),
    ("0\n-5\n", "x.mahi:2", "'-5' is not a timestamp"),
    ("0\n10\n\n5\n", "x.mahi:4", "5 ms comes before the previous line's 10 ms"),
])
def test_bad_mahimahi_traces_name_the_file_and_line(text, where, words):
    with pytest.raises(TraceError) as err:
        parse_mahimahi(text, "x.mahi")
    assert str(err.value).startswith(f"{where}:") and words in str(err.value)


def test_load_picks_the_format_by_extension(tmp_path):
    (tmp_path / "a.mahi").write_text("0\n1000\n")
    assert load(tmp_path / "a.mahi").length_s == 1
    (tmp_path / "a.txt").write_text("0\n")
    with pytest.raises(TraceError, match=r"a.txt: unknown trace format '.txt' \(use .csv or .mahi\)"):
        load(tmp_path / "a.txt")
    with pytest.raises(TraceError, match="b.csv: cannot read"):
        load(tmp_path / "b.csv")


@pytest.mark.parametrize("path", sorted(p for p in (NETEM_DIR / "traces").iterdir() if p.suffix in PARSERS),
                         ids=lambda p: p.name)
def test_every_shipped_trace_loads(path):
    trace = load(path)
    assert trace.length_s >= 60 and len(trace.starts) >= 10


# ---- traces in presets ------------------------------------------------------------------------

def preset_with(tmp_path: Path, text: str, traces: dict[str, str] | None = None) -> Path:
    (tmp_path / "traces").mkdir(exist_ok=True)
    for name, body in (traces or {}).items():
        (tmp_path / "traces" / name).write_text(body)
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return path


def test_a_traced_link_takes_the_traces_values_over_the_preset_then_phases_over_both(tmp_path):
    path = preset_with(tmp_path, "default: {delay_ms: 30, jitter_ms: 5, rate_mbit: 10}\n"
                                 "workers: [{trace: traces/t.csv, trace_end: hold}, {}]\n"
                                 "phases: [{start_s: 5, duration_s: 1, targets: ['worker:0'], link: {down: true}}]",
                       {"t.csv": CSV})
    preset = load_preset(str(path), tmp_path)
    at = lambda t: preset.link_at("worker", 0, t)  # noqa: E731
    assert (at(0).rate_mbit, at(0).delay_ms, at(0).loss_pct, at(0).jitter_ms) == (10, 40, 0, 5)  # loss: the preset's
    assert (at(3).rate_mbit, at(3).loss_pct) == (5, 1)
    assert at(5.5).down and at(5.5).delay_ms == 60
    assert at(100).rate_mbit == 8 and not at(100).down
    assert preset.link_at("worker", 1, 3).rate_mbit == 10  # the other entry has no trace
    assert [preset.next_change(t) for t in (0, 2.5, 4, 5, 6)] == [2.5, 4, 5, 6, None]
    assert {link.rate_mbit for link in preset.links_over_time("worker", 0)} == {10, 5, 8}


@pytest.mark.parametrize("text, traces, words", [
    ("default: {trace: /etc/passwd}", {}, "default.trace: value error, '/etc/passwd': a trace is named traces/"),
    ("default: {trace: traces/../x.csv}", {}, "a trace is named traces/"),
    ("default: {trace: traces/missing.csv}", {}, "default.trace: {dir}/traces/missing.csv: cannot read"),
    ("workers: [{trace: traces/t.csv}]", {"t.csv": "t_s,rate_mbit,delay_ms,loss_pct\n0,x,,\n1,,,\n"},
     "workers.0.trace: {dir}/traces/t.csv:2: rate_mbit: 'x' is not a number"),
    ("default: {trace: traces/t.csv, trace_end: stop}", {"t.csv": CSV}, "default.trace_end"),
    ("default: {jitter_ms: 45, trace: traces/t.csv}", {"t.csv": CSV}, "default under traces/t.csv: jitter_ms 45 is above delay_ms 40"),
    ("phases: [{link: {trace: traces/t.csv}}]", {"t.csv": CSV}, "a phase cannot set a trace"),
])
def test_bad_traced_presets_are_refused_with_the_preset_and_the_trace_named(tmp_path, text, traces, words):
    path = preset_with(tmp_path, text, traces)
    with pytest.raises(ConfigError) as err:
        load_preset(str(path), tmp_path)
    assert str(err.value).startswith(f"{path}: ") and words.format(dir=tmp_path) in str(err.value)


def test_the_shipped_trace_preset_moves_each_worker_every_second():
    preset = load_preset("varying", NETEM_DIR)
    assert {preset.link_for("worker", i).trace for i in range(3)} == {
        "traces/cellular_walk.csv", "traces/congestion_periodic.csv", "traces/cellular_walk.mahi"}
    assert preset.next_change(0) == 1 and preset.next_change(59.5) == 60
    for index in range(3):
        rates = {preset.link_at("worker", index, t).rate_mbit for t in range(60)}
        assert len(rates) >= 10
    assert preset.link_for("controller").is_identity


def test_the_bench_verdict_needs_both_correlation_and_a_small_error():
    from dist_llm_train.bench.trace import follow_figures

    expected = [10.0, 5.0, 20.0, 10.0]
    close = follow_figures([9.5, 4.8, 19.0, 9.6], expected)
    assert close["pearson_r"] > 0.99 and close["mae_mbit"] == pytest.approx(0.525)
    assert close["mae_share"] == pytest.approx(0.525 / 11.25) and close["passed"]
    assert not follow_figures([5.0, 2.5, 10.0, 5.0], expected)["passed"]  # r = 1, but half the rate: MAE 50 %
    assert not follow_figures([10.0, 20.0, 5.0, 10.0], expected)["passed"]  # right mean, wrong shape
