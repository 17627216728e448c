"""Preset validation: every shipped preset loads; every kind of bad preset is refused with the
file and the field named."""

from __future__ import annotations

from pathlib import Path

import pytest

from dist_llm_train.netem.preset import LinkSpec, available, load_preset
from dist_llm_train.schema import ConfigError

NETEM_DIR = Path(__file__).resolve().parents[2] / "netem"
REQUIRED = {"lan", "good", "cellular", "satellite", "degraded", "brownout", "straggler", "high_rtt", "federation"}


def test_every_required_preset_ships():
    assert REQUIRED <= set(available(NETEM_DIR))


@pytest.mark.parametrize("name", available(NETEM_DIR))
def test_every_shipped_preset_loads(name):
    preset = load_preset(name, NETEM_DIR)
    assert preset.name == name and preset.description
    for role in ("controller", "ps"):
        assert isinstance(preset.link_for(role), LinkSpec)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, field, words", [
    ("default: {delay_ms: 10, colour: red}", "default.colour", "extra inputs are not permitted"),
    ("surprise: 1", "surprise", "extra inputs are not permitted"),
    ("default: {delay_ms: -5}", "default.delay_ms", "greater than or equal to 0"),
    ("workers: [{}, {delay_ms: -1}]", "workers.1.delay_ms", "greater than or equal to 0"),
    ("default: {loss_pct: 101}", "default.loss_pct", "less than or equal to 100"),
    ("default: {loss_pct: -0.5}", "default.loss_pct", "greater than or equal to 0"),
    ("default: {rate_mbit: 0}", "default.rate_mbit", "greater than 0"),
    ("ps: {rate_mbit: -3}", "ps.rate_mbit", "greater than 0"),
    ("default: {delay_ms: '10'}", "default.delay_ms", "valid number"),
    ("default: {down: 1}", "default.down", "valid boolean"),
    ("workers: [{compute_speed: 0}]", "workers.0.compute_speed", "greater than or equal to 0.001"),
    ("workers: [{compute_speed: 1.0e-300}]", "workers.0.compute_speed", "greater than or equal to 0.001"),
    ("workers: [{compute_speed: 101}]", "workers.0.compute_speed", "less than or equal to 100"),
    ("phases: [{duration_s: 5, period_s: 5, link: {down: true}}]", "phases.0", "must exceed duration_s"),
    ("phases: [{period_s: 30, link: {down: true}}]", "phases.0", "needs duration_s"),
    ("phases: [{start_s: -1, link: {down: true}}]", "phases.0.start_s", "greater than or equal to 0"),
    ("phases: [{targets: [everyone], link: {down: true}}]", "phases.0.targets", "unknown target 'everyone'"),
    ("phases: [{link: {}}]", "phases.0", "names no field"),
    ("phases: [{link: {compute_speed: 2}}]", "phases.0.link.compute_speed", "extra inputs"),
    ("default: {rate_mbit: 5, queue_packets: 1}", "default.queue_packets", "greater than or equal to 2"),
    ("default: {rate_mbit: 5, queue_packets: 2.5}", "default.queue_packets", "valid integer"),
    ("- just a list", "(top level)", "expected a mapping"),
])
def test_bad_presets_are_refused_with_file_and_field(tmp_path, text, field, words):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_preset(str(path), NETEM_DIR)
    message = str(err.value)
    assert str(path) in message
    assert field in message or field == "(top level)"
    assert words in message.lower()


@pytest.mark.parametrize("text, where, says", [
    ("default: {delay_ms: 10, jitter_ms: 11}", "default", "jitter_ms .* is above delay_ms"),
    ("default: {delay_ms: 10}\nworkers: [{}, {jitter_ms: 20}]", "workers.1", "jitter_ms .* is above delay_ms"),
    ("default: {delay_ms: 10, jitter_ms: 5}\nps: {delay_ms: 2}", "ps", "jitter_ms .* is above delay_ms"),
    ("default: {delay_ms: 10, jitter_ms: 5}\nphases: [{targets: [workers], link: {delay_ms: 1}}]",
     "default under phases.0", "jitter_ms .* is above delay_ms"),
    ("default: {queue_packets: 100}", "default", "queue_packets 100 without rate_mbit"),
    ("default: {rate_mbit: 5, queue_packets: 100}\nworkers: [{rate_mbit: null}]", "workers.0",
     "queue_packets 100 without rate_mbit"),
    ("default: {rate_mbit: 5, queue_packets: 100}\nphases: [{link: {rate_mbit: null}}]", "default under phases.0",
     "queue_packets 100 without rate_mbit"),
])
def test_a_link_that_contradicts_itself_is_refused_where_it_happens(tmp_path, text, where, says):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=f"{path}: {where}: {says}"):
        load_preset(str(path), NETEM_DIR)


@pytest.mark.parametrize("name, rate, delay, loss, queue", [
    ("china_korea", 6.25, 304, 0.25, 362),
    ("brazil_colombia", 3.04, 260, 0, 426),
])
def test_pantheon_calibrated_paths_carry_the_papers_figures(name, rate, delay, loss, queue):
    # Pantheon's one-way delay is added in each direction (RTT = 2 x); ours once per round trip.
    preset = load_preset(name, NETEM_DIR)
    for index in range(3):
        assert preset.link_for("worker", index) == LinkSpec(rate_mbit=rate, delay_ms=delay, loss_pct=loss,
                                                            queue_packets=queue)
    assert preset.link_for("controller").is_identity and preset.link_for("ps").is_identity


def test_unknown_name_lists_the_presets():
    with pytest.raises(ConfigError, match="no such preset .*high_rtt"):
        load_preset("nope", NETEM_DIR)


def test_a_name_cannot_escape_the_folder():
    with pytest.raises(ConfigError, match="lowercase letters"):
        load_preset("..", NETEM_DIR)


def test_entries_inherit_default_field_by_field(tmp_path):
    path = write(tmp_path, "default: {delay_ms: 30, jitter_ms: 3, rate_mbit: 20}\n"
                           "controller: {rate_mbit: null}\n"
                           "workers: [{loss_pct: 1}, {delay_ms: 40, compute_speed: 0.5}]")
    preset = load_preset(str(path), NETEM_DIR)
    assert preset.link_for("controller") == LinkSpec(delay_ms=30, jitter_ms=3, rate_mbit=None)
    assert preset.link_for("ps") == LinkSpec(delay_ms=30, jitter_ms=3, rate_mbit=20)
    assert preset.link_for("worker", 0) == LinkSpec(delay_ms=30, jitter_ms=3, loss_pct=1, rate_mbit=20)
    assert preset.link_for("worker", 3) == LinkSpec(delay_ms=40, jitter_ms=3, rate_mbit=20)  # 3 mod 2 = 1
    assert [preset.compute_speed(i) for i in range(4)] == [1.0, 0.5, 1.0, 0.5]


def test_federation_sites_cycle_over_workers():
    preset = load_preset("federation", NETEM_DIR)
    delays = [preset.link_for("worker", i).delay_ms for i in range(7)]
    assert delays == [1, 5, 30, 45, 35, 1, 5]
    assert preset.link_for("ps") == preset.link_for("worker", 0)  # the servers are at Chicago


def test_lan_installs_nothing():
    preset = load_preset("lan", NETEM_DIR)
    assert all(link.is_identity for role in ("controller", "ps", "worker")
               for link in preset.links_over_time(role, 0))


def test_straggler_is_one_worker_in_eight():
    preset = load_preset("straggler", NETEM_DIR)
    slow = [i for i in range(16) if preset.compute_speed(i) < 1]
    assert slow == [0, 8]
    assert preset.link_for("worker", 0).rate_mbit == 2 and preset.link_for("worker", 1).is_identity
