"""Matrix expansion: counts and contents of cells, command-line overrides, resume keys, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dist_llm_train.experiments.matrix import cell_key, expand, load_matrix, with_overrides
from dist_llm_train.schema import ConfigError

BASIC = {"name": "b", "mode": "basic", "seed": 7, "workers": {"count": 3}, "tasks": {"count": 5}}
ML = {"name": "m", "mode": "ml", "ml": {"budget": {"max_versions": 10}}}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "basic_a.yaml").write_text(yaml.safe_dump(BASIC))
    (tmp_path / "configs" / "basic_b.yaml").write_text(yaml.safe_dump({**BASIC, "name": "b2", "seed": 0}))
    (tmp_path / "configs" / "ml_a.yaml").write_text(yaml.safe_dump(ML))
    (tmp_path / "netem").mkdir()
    for profile in ("lan", "high_rtt", "satellite"):
        (tmp_path / "netem" / f"{profile}.yaml").write_text("default: {delay_ms: 5}\n")
    return tmp_path


def write_matrix(root: Path, studies: list[dict]) -> Path:
    path = root / "m.yaml"
    path.write_text(yaml.safe_dump({"studies": studies}, sort_keys=False))
    return path


def cells_of(root: Path, studies: list[dict], **overrides):
    path = write_matrix(root, studies)
    matrix = with_overrides(load_matrix(path), str(path), root, **overrides) if overrides else load_matrix(path)
    return expand(matrix, str(path), root, root / "netem")


def test_expansion_crosses_configs_profiles_repeats_workers_and_sweeps(root):
    studies = [{"name": "s", "configs": ["configs/basic_a.yaml", "configs/basic_b.yaml"], "profiles": ["lan", "satellite"],
                "repeats": 2, "workers": [2, 4], "sweep": {"controller.scheduler": ["fifo", "priority", "capability"]}}]

    cells = cells_of(root, studies)

    assert len(cells) == 2 * 2 * 2 * 2 * 3
    assert len({c.key for c in cells}) == len(cells)
    first = cells[0]
    assert (first.config_path, first.profile, first.repeat, first.workers) == ("configs/basic_a.yaml", "lan", 1, 2)
    assert first.config.controller.scheduler == "fifo" and first.sweep == (("controller.scheduler", "fifo"),)
    assert {c.config.controller.scheduler for c in cells} == {"fifo", "priority", "capability"}
    assert {c.workers for c in cells} == {2, 4}


def test_repeat_offsets_the_config_seed_and_keeps_the_rest(root):
    cells = cells_of(root, [{"name": "s", "configs": ["configs/basic_a.yaml"], "profiles": ["lan"], "repeats": 3}])

    assert [c.repeat for c in cells] == [1, 2, 3]
    assert [c.config.seed for c in cells] == [7, 8, 9]
    assert {c.workers for c in cells} == {3}  # no `workers:` in the study: the config's own count
    assert {c.config.tasks.count for c in cells} == {5}


def test_ml_sweep_sets_nested_fields(root):
    studies = [{"name": "ml", "configs": ["configs/ml_a.yaml"], "profiles": ["lan"],
                "sweep": {"ml.staleness.protocol": ["sync", "async", "adaptive"], "ml.compression.codec": ["none", "topk"]}}]

    cells = cells_of(root, studies)

    pairs = [(c.config.ml.staleness.protocol, c.config.ml.compression.codec) for c in cells]
    assert pairs == [("sync", "none"), ("sync", "topk"), ("async", "none"), ("async", "topk"),
                     ("adaptive", "none"), ("adaptive", "topk")]
    assert all(c.mode == "ml" for c in cells)


def test_the_same_run_asked_by_two_studies_is_one_cell(root):
    protocol = {"name": "protocol", "configs": ["configs/ml_a.yaml"], "profiles": ["lan"],
                "sweep": {"ml.staleness.protocol": ["sync", "async"]}}
    codec = {"name": "codec", "configs": ["configs/ml_a.yaml"], "profiles": ["lan"],
             "sweep": {"ml.compression.codec": ["none", "topk"]}}

    cells = cells_of(root, [protocol, codec])

    # async + none is the config's default in both studies: run once, credited to the first study.
    assert [(c.study, c.config.ml.staleness.protocol, c.config.ml.compression.codec) for c in cells] == [
        ("protocol", "sync", "none"), ("protocol", "async", "none"), ("codec", "async", "topk")]


def test_keys_are_stable_and_depend_on_every_part(root):
    studies = [{"name": "s", "configs": ["configs/basic_a.yaml"], "profiles": ["lan", "high_rtt"], "repeats": 2}]
    once = [c.key for c in cells_of(root, studies)]
    again = [c.key for c in cells_of(root, studies)]
    assert once == again and len(set(once)) == 4

    config = cells_of(root, studies)[0].config
    base = cell_key(config, "lan", 1)
    assert base != cell_key(config, "high_rtt", 1)
    assert base != cell_key(config, "lan", 2)
    assert base != cell_key(config.model_copy(update={"seed": config.seed + 1}), "lan", 1)
    assert base != cell_key(config.model_copy(update={"timeout_s": 1.0}), "lan", 1)


def test_overrides_replace_profiles_and_repeats_everywhere(root):
    studies = [{"name": "a", "configs": ["configs/basic_a.yaml"], "profiles": ["lan"], "repeats": 3},
               {"name": "b", "configs": ["configs/ml_a.yaml"], "profiles": ["high_rtt"]}]

    cells = cells_of(root, studies, profiles=["satellite", "high_rtt"], repeats=1)

    assert [(c.study, c.profile, c.repeat) for c in cells] == [
        ("a", "satellite", 1), ("a", "high_rtt", 1), ("b", "satellite", 1), ("b", "high_rtt", 1)]


def test_configs_override_replaces_configs_of_studies_of_the_same_mode(root):
    studies = [{"name": "basic", "configs": ["configs/basic_a.yaml"], "profiles": ["lan"]},
               {"name": "ml", "configs": ["configs/ml_a.yaml"], "profiles": ["lan"],
                "sweep": {"ml.compression.codec": ["none", "topk"]}}]

    only_basic = cells_of(root, studies, configs=["configs/basic_b.yaml"])
    by_glob = cells_of(root, studies, pattern="configs/*_a.yaml")

    assert [(c.study, c.config_path) for c in only_basic] == [("basic", "configs/basic_b.yaml")]
    assert [(c.study, c.config_path) for c in by_glob] == [
        ("basic", "configs/basic_a.yaml"), ("ml", "configs/ml_a.yaml"), ("ml", "configs/ml_a.yaml")]


@pytest.mark.parametrize("overrides, message", [
    ({"configs": ["configs/ml_a.yaml"]}, "mode 'ml', but no study of"),
    ({"configs": ["configs/nope.yaml"]}, "configs/nope.yaml: no such file"),
    ({"pattern": "configs/*.json"}, "--glob configs/*.json: no file matches"),
    ({"repeats": 0}, "--repeats: must be at least 1"),
])
def test_bad_overrides_are_refused(root, overrides, message):
    studies = [{"name": "basic", "configs": ["configs/basic_a.yaml"], "profiles": ["lan"]}]
    with pytest.raises(ConfigError, match=message.replace("*", r"\*").replace("(", r"\(")):
        cells_of(root, studies, **overrides)


GOOD = {"name": "s", "configs": ["configs/basic_a.yaml"], "profiles": ["lan"]}


@pytest.mark.parametrize("studies, message", [
    ([], r"studies: list should have at least 1 item"),
    ([{**GOOD, "profile": ["lan"]}], r"studies\.0\.profile: extra inputs are not permitted"),
    ([{**GOOD, "repeats": 0}], r"studies\.0\.repeats: input should be greater than or equal to 1"),
    ([{**GOOD, "repeats": "2"}], r"studies\.0\.repeats: input should be a valid integer"),
    ([{**GOOD, "workers": [0]}], r"studies\.0\.workers: value error, every worker count must be at least 1"),
    ([{**GOOD, "sweep": {"seed": [1, 2]}}], r"'seed' cannot be swept; use the study's 'repeats' field"),
    ([{**GOOD, "sweep": {"workers.count": [1]}}], r"use the study's 'workers' field"),
    ([{**GOOD, "sweep": {"controller.scheduler": []}}], r"'controller.scheduler' has no values"),
    ([{**GOOD, "name": "a b"}], r"studies\.0\.name: string should match pattern"),
    ([GOOD, GOOD], r"study names must be unique, repeated: \['s'\]"),
    ([{**GOOD, "profiles": ["mars"]}], r"studies\.0 \(s\): profiles: .*mars\.yaml: no such preset \(presets in .*: high_rtt, lan, satellite\)"),
    ([{**GOOD, "profiles": ["Mars"]}], r"studies\.0 \(s\): profiles: preset 'Mars': a name is lowercase"),
    ([{**GOOD, "configs": ["configs/missing.yaml"]}], r"configs/missing\.yaml: no such file"),
    ([{**GOOD, "configs": ["configs/basic_a.yaml", "configs/ml_a.yaml"]}], r"study s: configs of different modes"),
    ([{**GOOD, "sweep": {"controller.scheduler": ["fifo", "bogus"]}}],
     r"studies\.0 \(s\): configs/basic_a\.yaml with controller\.scheduler='bogus': controller\.scheduler: input should be"),
    ([{**GOOD, "sweep": {"controller.schedular": ["fifo"]}}], r"controller\.schedular: extra inputs are not permitted"),
    ([{**GOOD, "sweep": {"ml.compression.codec": ["topk"]}}], r"mode 'basic' takes no 'ml' section"),
])
def test_bad_matrices_are_refused_with_file_and_field(root, studies, message):
    with pytest.raises(ConfigError, match=message) as info:
        cells_of(root, studies)
    assert "m.yaml" in str(info.value)


def test_a_matrix_that_is_not_a_mapping_is_refused(root):
    path = root / "m.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="m.yaml: expected a mapping"):
        load_matrix(path)


def test_an_invalid_preset_is_refused_before_any_run(root):
    (root / "netem" / "broken.yaml").write_text("default: {delay_ms: -5}\n")
    with pytest.raises(ConfigError, match=r"studies\.0 \(s\): profiles: .*broken\.yaml: default\.delay_ms: input should be"):
        cells_of(root, [{**GOOD, "profiles": ["lan", "broken"]}])


REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name, count", [("quick", 2), ("matrix", 99), ("full", 235), ("bench_ps", 8), ("adaptive", 42)])
def test_shipped_matrices_expand_to_the_cells_their_header_states(name, count):
    path = REPO / "experiments" / f"{name}.yaml"
    assert len(expand(load_matrix(path), str(path), REPO, REPO / "netem")) == count


def test_the_seed_matrix_runs_basic_mode_under_every_preset():
    basic = load_matrix(REPO / "experiments" / "matrix.yaml").studies[0]
    assert basic.configs == ["configs/basic_demo.yaml"]
    assert sorted(basic.profiles) == sorted(p.stem for p in (REPO / "netem").glob("*.yaml"))


@pytest.mark.parametrize("name", ["matrix", "full", "adaptive"])
def test_the_studies_give_equal_work_to_every_ml_cell_and_three_or_more_seeded_repeats(name):
    path = REPO / "experiments" / f"{name}.yaml"
    cells = expand(load_matrix(path), str(path), REPO, REPO / "netem")
    budgets = {(c.config.ml.budget.max_tokens, c.config.ml.budget.target_val_loss, c.config.ml.budget.max_time_s)
               for c in cells if c.mode == "ml"}
    assert len(budgets) == 1 and None not in next(iter(budgets))
    for cell in cells:
        repeats = [c for c in cells if c.config.model_copy(update={"seed": 0}) == cell.config.model_copy(update={"seed": 0})
                   and c.profile == cell.profile]
        assert len(repeats) >= 3 and len({c.config.seed for c in repeats}) == len(repeats)


def test_planned_work_names_the_budget_and_the_cap(root):
    ml = cells_of(root, [{"name": "s", "configs": ["configs/ml_a.yaml"], "profiles": ["lan"],
                          "sweep": {"ml.budget.max_tokens": [5000], "ml.budget.target_val_loss": [2.5]}}])[0]
    basic = cells_of(root, [{"name": "s", "configs": ["configs/basic_a.yaml"], "profiles": ["lan"]}])[0]

    assert ml.planned_work() == ("target val loss 2.5; budget 5,000 tokens, 10 versions; cap max_time_s 600 s "
                                 "(timeout_s 600 s)")
    assert basic.planned_work() == "basic run, cap timeout_s 600 s"
