"""The hivemind trainer's pure parts: the config mapping and its refusals (hive/recipe.py), the initial peer's
derived identity (hive/identity.py), a peer's divergence check (hive/peer.py), the interface counters
(netem/counters.py)."""

from __future__ import annotations

import pytest
import torch

from dist_llm_train.config import load_run_config
from dist_llm_train.hive import identity
from dist_llm_train.hive.peer import step_divergence
from dist_llm_train.hive.recipe import recipe
from dist_llm_train.ml.model import build_model
from dist_llm_train.ml.train import loss_of
from dist_llm_train.netem.counters import InterfaceTally, append_series, parse_net_dev
from dist_llm_train.schema import ConfigError

HIVEMIND = {"ml.trainer": "hivemind"}


def test_sync_config_maps_to_gradient_averaging_with_the_ps_optimizer():
    plan = recipe(load_run_config("configs/ml_sync.yaml", HIVEMIND), "20261207T000000Z-ml_sync-abc")
    assert plan.target_batch_size == 4 * 32 and plan.batch_size_per_step == 32  # one builtin sync round
    assert not plan.use_local_updates and plan.optimizer == "adam"
    assert plan.optimizer_kwargs() == {"lr": 0.002, "betas": (0.9, 0.999), "eps": 1e-8}
    assert plan.compression == "NoCompression" and plan.averaging_timeout_s == 30.0
    assert plan.run_prefix == "20261207T000000Z-ml_sync-abc"


def test_local_steps_map_to_local_updates_averaged_every_h_steps():
    config = load_run_config("configs/ml_diloco.yaml", {**HIVEMIND, "ml.compression.codec": "int8",
                                                          "ml.compression.error_feedback": False,
                                                          "ml.local.outer_lr": 1.0, "ml.local.outer_momentum": 0.0})
    plan = recipe(config, "r")
    assert plan.use_local_updates and plan.target_batch_size == 4 * 32 * 50 and plan.average_state_every == 1
    assert plan.optimizer == "adam" and plan.optimizer_kwargs()["lr"] == 0.001  # LocalSteps' inner Adam
    assert plan.compression == "Uniform8BitQuantization"


def test_sgd_and_fp16_map_to_torch_sgd_and_float16():
    plan = recipe(load_run_config("configs/ml_hivemind_ci.yaml"), "r")
    assert plan.optimizer_kwargs() == {"lr": 0.5, "momentum": 0.9} and plan.compression == "Float16Compression"
    assert plan.target_batch_size == 3 * 16 and plan.matchmaking_time_s == 5.0


@pytest.mark.parametrize("overrides, field", [
    ({"ml.compression.codec": "topk"}, "compression.codec: hivemind has no topk compression"),
    ({"ml.compression.codec": "fp16"}, "compression.error_feedback: hivemind's averagers keep no error-feedback"),
    ({"ml.compression.codec": "int8", "ml.compression.error_feedback": False, "ml.compression.downlink": "none"},
     "compression.downlink: hivemind's all-reduce compresses both directions"),
    ({"ml.staleness.protocol": "async"}, "staleness.protocol: hivemind.Optimizer averages in rounds"),
    ({"ml.aggregation.rule": "median"}, "aggregation.rule: hivemind averages"),
    ({"ml.privacy.clip_norm": 1.0}, "privacy: hivemind neither clips nor adds noise"),
    ({"ml.attack.kind": "sign_flip", "ml.attack.workers": [0]}, "attack: the Byzantine workers are the builtin"),
    ({"ml.local.steps": 50}, "local.outer_lr, local.outer_momentum: hivemind's local updates average parameters"),
])
def test_what_hivemind_cannot_do_is_refused_with_file_and_field(overrides, field):
    with pytest.raises(ConfigError) as refused:
        load_run_config("configs/ml_sync.yaml", {**HIVEMIND, **overrides})
    assert str(refused.value).startswith("configs/ml_sync.yaml: ml: ") and field in str(refused.value)


def test_the_builtin_trainer_keeps_every_option():
    assert load_run_config("configs/ml_topk.yaml").ml.trainer == "builtin"


def test_a_peer_s_step_diverged_when_its_loss_or_gradient_is_not_finite_or_above_the_bound():
    config = load_run_config("configs/ml_hivemind_ci.yaml")
    model = build_model(config.ml.model, config.seed)
    x = torch.randint(0, 256, (2, 16))
    loss = loss_of(model, x, x)
    loss.backward()
    assert step_divergence(loss.item(), model, 2234.0) is None  # an honest gradient
    assert step_divergence(float("nan"), model, 2234.0) == "training loss is nan"
    assert step_divergence(loss.item(), model, 1e-9).startswith("update norm ")
    next(model.parameters()).grad[0] = float("inf")
    assert step_divergence(loss.item(), model, 2234.0) == "the update holds NaN or Inf"


def test_the_ed25519_public_key_is_rfc_8032s():
    seed = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")  # RFC 8032 test 1
    assert identity.public_key(seed).hex() == "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"


def test_the_initial_peer_id_is_the_one_hivemind_s_daemon_announced_for_the_key():
    # hivemind 1.1.12's p2pd, started with key_file(seed) as its identity, ran as this peer id
    seed = identity.seed("x" * 32, "run1")
    assert identity.peer_id(seed) == "12D3KooWMs3ywWrwSbBVvJUeEpS88RxJ9myp2bpfPHdqvG62Jzp4"
    assert identity.key_file(seed)[:4] == bytes([0x08, 0x01, 0x12, 64]) and len(identity.key_file(seed)) == 68
    assert identity.initial_peer("ps", seed) == f"/dns4/ps/tcp/{identity.PORT}/p2p/{identity.peer_id(seed)}"


def test_the_identity_is_per_run_and_per_token():
    ids = {identity.peer_id(identity.seed(token, run)) for token in ("a" * 32, "b" * 32) for run in ("r1", "r2")}
    assert len(ids) == 4
    assert identity.base58(b"\0\0\x01") == "112"


NET_DEV = """Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     100       2    0    0    0     0          0         0      100       2    0    0    0     0       0          0
  eth0: 5000000    4000    0    1    0     0          0         0  2500000    3000    0    0    0     0       0          0
"""


def test_net_dev_is_read_by_column():
    assert parse_net_dev(NET_DEV) == {"rx_bytes": 5000000, "rx_packets": 4000, "tx_bytes": 2500000, "tx_packets": 3000}
    assert parse_net_dev(NET_DEV, "eth1") is None


def test_the_tally_counts_from_the_start_and_a_late_namespace_from_zero(monkeypatch):
    readings = {"agent:a": {"rx_bytes": 100, "rx_packets": 1, "tx_bytes": 50, "tx_packets": 1}}
    monkeypatch.setattr("dist_llm_train.netem.counters.read_counters", lambda netns: readings.get(netns))
    tally = InterfaceTally()
    tally.update([("a", 1, "worker-0", "worker", "agent:a")])
    assert tally.summary() is None  # nothing before the run starts
    tally.start([("a", 1, "worker-0", "worker", "agent:a")])
    readings["agent:a"] = {"rx_bytes": 1100, "rx_packets": 3, "tx_bytes": 550, "tx_packets": 4}
    readings["agent:b"] = {"rx_bytes": 70, "rx_packets": 1, "tx_bytes": 30, "tx_packets": 1}
    tally.update([("a", 1, "worker-0", "worker", "agent:a"), ("b", 2, "worker-1", "worker", "agent:b")])
    readings.pop("agent:a")  # worker-0 gone: it keeps what it counted
    tally.update([("b", 2, "worker-1", "worker", "agent:b")])
    summary = tally.summary()
    assert summary["roles"]["worker"] == {"rx_bytes": 1070, "rx_packets": 3, "tx_bytes": 530, "tx_packets": 4}
    assert summary["containers"]["worker-0"]["tx_bytes"] == 500


def test_the_series_gets_a_header_once(tmp_path):
    summary = {"roles": {"worker": {"tx_bytes": 10, "rx_bytes": 20}}, "containers": {}, "interface": "eth0"}
    append_series(tmp_path / "interfaces.csv", 1.0, summary)
    append_series(tmp_path / "interfaces.csv", 3.0, summary)
    append_series(tmp_path / "interfaces.csv", 5.0, None)
    assert (tmp_path / "interfaces.csv").read_text() == ("t_s,worker_tx_bytes,worker_rx_bytes,ps_tx_bytes,ps_rx_bytes\n"
                                                         "1.000,10,20,0,0\n3.000,10,20,0,0\n")
