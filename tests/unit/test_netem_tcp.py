"""TCP as part of the experiment: the preset's `tcp` block, the host check with its command, the
commands the sidecar runs, and the Mathis bound (netem/tcp.py)."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest

from dist_llm_train.netem import tcp
from dist_llm_train.netem.preset import CongestionControl, TcpSpec, load_preset
from dist_llm_train.schema import ConfigError
from dist_llm_train.settings import TCP_CC_CHOICES, from_env

NETEM_DIR = Path(__file__).resolve().parents[2] / "netem"
TOKEN = "x" * 32


def preset(tmp_path: Path, text: str, tcp_override=None):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return load_preset(str(path), tmp_path, tcp_override)


def test_cubic_is_the_default_of_every_shipped_preset_container():
    for name in ("lan", "cellular", "federation", "straggler"):
        p = load_preset(name, NETEM_DIR)
        links = [p.link_for("controller"), p.link_for("ps")] + [p.link_for("worker", i) for i in range(8)]
        assert {link.tcp.congestion_control for link in links} == {"cubic"}


def test_top_level_block_then_entries_override_it(tmp_path):
    p = preset(tmp_path, "tcp: {congestion_control: reno}\n"
                         "ps: {tcp: {congestion_control: bbr}}\n"
                         "workers: [{}, {delay_ms: 5, tcp: {congestion_control: cubic}}]\n")
    assert p.link_for("controller").tcp == TcpSpec(congestion_control="reno")
    assert p.link_for("ps").tcp.congestion_control == "bbr"
    assert [p.link_for("worker", i).tcp.congestion_control for i in range(4)] == ["reno", "cubic", "reno", "cubic"]
    assert p.link_for("worker", 1).delay_ms == 5
    assert p.tcp_choices() == {"reno": "tcp.congestion_control", "bbr": "ps.tcp.congestion_control",
                               "cubic": "workers.1.tcp.congestion_control"}


def test_default_entry_may_set_it_too(tmp_path):
    p = preset(tmp_path, "default: {delay_ms: 3, tcp: {congestion_control: bbr}}\nps: {delay_ms: 0}\n")
    assert p.link_for("ps").tcp.congestion_control == "bbr"
    assert p.tcp_choices() == {"bbr": "default.tcp.congestion_control"}


def test_a_link_with_only_tcp_settings_installs_no_rule(tmp_path):
    p = preset(tmp_path, "tcp: {congestion_control: bbr}\n")
    assert p.link_for("worker", 0).is_identity
    assert not preset(tmp_path, "default: {delay_ms: 1}\n").link_for("worker", 0).is_identity


@pytest.mark.parametrize("text, field, words", [
    ("tcp: {congestion_control: vegas}", "tcp.congestion_control", "'cubic', 'bbr', 'reno' or 'host'"),
    ("workers: [{tcp: {congestion_control: CUBIC}}]", "workers.0.tcp.congestion_control", "'cubic'"),
    ("tcp: {ecn: 1}", "tcp.ecn", "extra inputs are not permitted"),
    ("phases: [{link: {tcp: {congestion_control: bbr}}}]", "phases.0", "a phase cannot change TCP settings"),
])
def test_bad_tcp_blocks_are_refused_with_the_field(tmp_path, text, field, words):
    with pytest.raises(ConfigError) as err:
        preset(tmp_path, text)
    assert f"{field}:" in str(err.value) and words in str(err.value)


def test_tcp_cc_overrides_every_entry(tmp_path):
    text = "tcp: {congestion_control: reno}\nworkers: [{tcp: {congestion_control: bbr}}]\n"
    p = preset(tmp_path, text, "host")
    assert {p.link_for(r).tcp.congestion_control for r in ("controller", "ps", "worker")} == {"host"}
    assert p.tcp_choices() == {}  # host asks nothing of the kernel
    assert preset(tmp_path, text, "cubic").tcp_choices() == {"cubic": "TCP_CC (set for every container)"}


def test_the_settings_choices_match_the_preset_literal():
    assert set(TCP_CC_CHOICES) == set(get_args(CongestionControl))
    assert from_env({"RUN_TOKEN": TOKEN, "TCP_CC": "bbr"}).tcp_cc == "bbr"
    assert from_env({"RUN_TOKEN": TOKEN}).tcp_cc is None
    with pytest.raises(ConfigError, match="TCP_CC: expected one of cubic, bbr, reno, host, got 'vegas'"):
        from_env({"RUN_TOKEN": TOKEN, "TCP_CC": "vegas"})


def test_commands_set_the_namespace_default_and_host_sets_nothing():
    assert tcp.commands(TcpSpec()) == [("sysctl", "-q", "-w", "net.ipv4.tcp_congestion_control=cubic")]
    assert tcp.commands(TcpSpec(congestion_control="bbr"))[0][-1] == "net.ipv4.tcp_congestion_control=bbr"
    assert tcp.commands(TcpSpec(congestion_control="host")) == []


@pytest.mark.parametrize("choices, allowed, available, words", [
    ({"cubic": "tcp.congestion_control"}, ["reno", "cubic"], ["reno", "cubic"], None),
    ({}, [], [], None),  # TCP_CC=host
    ({"cubic": "tcp.congestion_control"}, ["reno", "bbr"], ["reno", "bbr", "cubic"],
     'p.yaml: tcp.congestion_control: cubic is not in this host\'s net.ipv4.tcp_allowed_congestion_control '
     '(reno bbr), and a container may choose only those. Allow it on the host: '
     'sudo sysctl -w net.ipv4.tcp_allowed_congestion_control="reno bbr cubic"'),
    ({"bbr": "workers.1.tcp.congestion_control"}, ["reno", "cubic"], ["reno", "cubic"],
     "p.yaml: workers.1.tcp.congestion_control: bbr is not available in this kernel (available: reno cubic); "
     "if it is a module, load it on the host: sudo modprobe tcp_bbr"),
])
def test_host_problem_names_the_field_and_the_command(choices, allowed, available, words):
    problem = tcp.host_problem(choices, "p.yaml", allowed, available)
    if words is None:
        assert problem is None
    else:
        assert words in problem
        assert "TCP_CC=host" in problem or "not available" in problem  # the way out that changes nothing on the host


def test_host_lists_reads_the_kernel_files(tmp_path):
    (tmp_path / "tcp_allowed_congestion_control").write_text("reno bbr\n")
    (tmp_path / "tcp_available_congestion_control").write_text("reno bbr cubic\n")
    assert tcp.host_lists(tmp_path) == (["reno", "bbr"], ["reno", "bbr", "cubic"])
    assert tcp.host_lists(tmp_path / "absent") == ([], [])


@pytest.mark.parametrize("rtt_ms, loss_pct, mbit", [
    (60.0, 5.0, 1448 * 8 / 0.060 * 1.224745 / 0.223607 / 1e6),  # 30 ms each way, 5 %: ~1.06 Mbit/s
    (40.0, 1.0, 3.5469),  # cellular's download
    (600.0, 0.5, 0.33440),  # satellite
    (40.0, 0.0, None),
    (0.0, 1.0, None),
])
def test_mathis_bound_by_hand(rtt_ms, loss_pct, mbit):
    got = tcp.mathis_mbit(rtt_ms, loss_pct)
    assert got == (None if mbit is None else pytest.approx(mbit, rel=1e-4))
