"""Following the PS's curve.csv: incremental, bounded, and never trusting a cell."""

from __future__ import annotations

import os

import pytest

from dist_llm_train.controller.curve_tail import (MAX_LINE_BYTES, CurveTail, read_staleness, run_dir)

HEADER = "t_s,version,train_loss,val_loss,updates_accepted,updates_rejected,mean_staleness,bytes_up,bytes_down\n"


def row(version: int, val: str = "") -> str:
    return f"{version / 10},{version},2.5,{val},{version},0,1.0,{100 * version},{200 * version}\n"


@pytest.fixture
def curve(tmp_path):
    return tmp_path / "curve.csv"


def append(path, text: str | bytes) -> None:
    with open(path, "ab") as fh:
        fh.write(text.encode() if isinstance(text, str) else text)


def test_rows_are_read_as_they_are_appended_and_numbered(curve):
    tail = CurveTail(curve)
    assert tail.refresh() == 0 and tail.rows == []  # no file yet

    append(curve, HEADER + row(1) + row(2, "3.5"))
    assert tail.refresh() == 2
    append(curve, row(3))
    assert tail.refresh() == 1

    assert [(r["seq"], r["version"], r["val_loss"]) for r in tail.rows] == [(1, 1, None), (2, 2, 3.5), (3, 3, None)]
    assert tail.rows[2] == {"seq": 3, "t_s": 0.3, "version": 3.0, "train_loss": 2.5, "val_loss": None,
                            "updates_accepted": 3.0, "updates_rejected": 0.0, "mean_staleness": 1.0,
                            "bytes_up": 300.0, "bytes_down": 600.0}
    assert [r["seq"] for r in tail.since(1)] == [2, 3] and tail.last_seq == 3


def test_a_line_without_its_end_waits_for_it(curve):
    tail = CurveTail(curve)
    append(curve, HEADER + row(1) + "0.2,2,2.4,")
    assert tail.refresh() == 1

    append(curve, "3.1,2,0,1.0,200,400\n")
    assert tail.refresh() == 1
    assert tail.rows[-1]["val_loss"] == 3.1


@pytest.mark.parametrize("line", [
    "nan,4,2.5,,4,0,1.0,400,800\n",          # time not finite
    "0.4,inf,2.5,,4,0,1.0,400,800\n",        # version not finite
    "0.4,,2.5,,4,0,1.0,400,800\n",           # version missing
    "0.4,4,2.5\n",                           # too few cells
    "0.4,4,2.5,,4,0,1.0,400,800,extra\n",    # too many
    "not,a,row,at,all,really,no,no,no\n",
    "\xff\xfe\n",                            # not UTF-8 (written as raw bytes below)
])
def test_malformed_rows_are_skipped_and_counted(curve, line):
    tail = CurveTail(curve)
    append(curve, HEADER + row(1))
    append(curve, line.encode("latin-1"))
    append(curve, row(5))

    tail.refresh()

    assert [r["version"] for r in tail.rows] == [1, 5]
    assert tail.skipped == 1


def test_non_finite_losses_become_empty_not_nan(curve):
    tail = CurveTail(curve)
    append(curve, HEADER + "0.1,1,nan,-inf,1,0,1.0,100,200\n")
    tail.refresh()
    assert (tail.rows[0]["train_loss"], tail.rows[0]["val_loss"]) == (None, None)


def test_a_file_without_our_header_yields_nothing(curve):
    tail = CurveTail(curve)
    append(curve, "a,b,c\n1,2,3\n")
    tail.refresh()
    assert tail.rows == [] and tail.skipped == 2


def test_an_oversized_line_is_skipped_even_across_reads_and_never_held(curve):
    tail = CurveTail(curve, read_cap=4096)
    append(curve, HEADER + row(1) + "9" * (3 * MAX_LINE_BYTES))  # no end yet: longer than a line may be
    tail.refresh()
    assert len(tail.partial) <= MAX_LINE_BYTES and tail.skipped == 1

    append(curve, "9" * MAX_LINE_BYTES + "\n" + row(2))
    while tail.refresh():
        pass
    assert [r["version"] for r in tail.rows] == [1, 2] and tail.skipped == 1


def test_each_refresh_reads_at_most_its_cap(curve):
    append(curve, HEADER + "".join(row(v) for v in range(1, 1001)))
    tail = CurveTail(curve, read_cap=2048)

    first = tail.refresh()

    assert 0 < first < 100 and tail.offset == 2048
    while tail.refresh():
        pass
    assert len(tail.rows) == 1000


def test_past_the_cap_rows_without_a_loss_are_halved_and_evaluations_kept(curve):
    append(curve, HEADER + "".join(row(v, "2.0" if v % 50 == 0 else "") for v in range(1, 1001)))
    tail = CurveTail(curve, max_points=300)

    while tail.refresh():
        pass

    versions = [r["version"] for r in tail.rows]
    assert len(versions) <= 300 and versions == sorted(versions)
    assert [v for v in versions if v % 50 == 0] == list(range(50, 1001, 50))  # every evaluation stays
    assert versions[0] == 1 and versions[-1] == 1000  # the whole span stays


def test_a_replaced_file_is_read_again_with_new_numbers(curve):
    tail = CurveTail(curve)
    append(curve, HEADER + row(1) + row(2))
    tail.refresh()

    os.remove(curve)
    append(curve, HEADER + row(7))
    tail.refresh()

    assert [(r["seq"], r["version"]) for r in tail.rows] == [(3, 7)]  # seq never goes back


def test_staleness_histogram_is_read_defensively(tmp_path):
    path = tmp_path / "staleness.csv"
    assert read_staleness(path) is None

    path.write_text("staleness,count\n0,50\n1,30\n-1,5\nx,1\n2,1e3\n3,4,5\n2,20\n")

    assert read_staleness(path) == [[0, 50], [1, 30], [2, 20]]


@pytest.mark.parametrize("run_id, ok", [("20261207T051404Z-ml_ci-3e1981", True), ("../etc", False), ("a/b", False),
                                        (".hidden", False), ("x..y", False), ("", False)])
def test_a_run_id_that_could_leave_the_runs_folder_is_refused(tmp_path, run_id, ok):
    assert (run_dir(tmp_path, run_id) is not None) == ok


def test_the_final_evaluation_is_not_drawn_as_a_point_of_the_slice_curve(curve):
    # the PS's own header since val_set: the final row's loss is on another validation set
    append(curve, "t_s,version,train_loss,val_loss,val_set,bytes_up,bytes_down,tokens\n"
                  "1.0,10,2.5,2.4,slice,100,200,1024\n2.0,11,2.4,2.6,final,110,220,2048\n")
    tail = CurveTail(curve)

    assert tail.refresh() == 2
    assert [(r["version"], r["val_loss"]) for r in tail.rows] == [(10, 2.4), (11, None)]
