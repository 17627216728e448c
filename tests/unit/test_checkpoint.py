"""ps/checkpoint.py: our own format round-trips bit for bit, is written atomically, keeps the newest files,
refuses every kind of damage with the file named, and falls back to an older checkpoint of the same run."""

import json
import os

import pytest
import torch

from dist_llm_train.ps import checkpoint
from dist_llm_train.ps.checkpoint import Checkpoint, CheckpointError


def sample(version=7, run_id="run-a"):
    gen = torch.Generator().manual_seed(version)
    tensors = {"params": torch.randn(100, generator=gen), "optimizer.step": torch.tensor([3], dtype=torch.int64),
               "matrix": torch.randn(4, 5, generator=gen), "noise_rng": torch.Generator().manual_seed(1).get_state()}
    return Checkpoint(run_id, version, tensors, {"counters": {"accepted": 12}, "loss": 2.5})


def test_round_trip_is_bit_for_bit(tmp_path):
    ckpt = sample()
    path = checkpoint.save(tmp_path / "run-a", ckpt)
    assert path.name == "ckpt-000000000007.dlt"
    back = checkpoint.load(path)
    assert (back.run_id, back.version, back.meta) == ("run-a", 7, ckpt.meta)
    assert list(back.tensors) == list(ckpt.tensors)
    for name, tensor in ckpt.tensors.items():
        assert back.tensors[name].dtype == tensor.dtype and torch.equal(back.tensors[name], tensor)


def test_the_file_is_a_json_header_and_raw_bytes_never_pickle(tmp_path):
    path = checkpoint.save(tmp_path, sample())
    raw = path.read_bytes()
    length = int.from_bytes(raw[8:16], "big")
    header = json.loads(raw[16 : 16 + length])
    assert raw[:8] == b"DLTCKPT1" and header["version"] == 7
    params = header["tensors"][0]
    start = 16 + length + params["offset"]
    assert raw[start : start + params["nbytes"]] == sample().tensors["params"].numpy().tobytes()


def test_keeps_the_newest_and_leaves_no_temporary_file(tmp_path):
    for version in (10, 20, 30, 40):
        checkpoint.save(tmp_path, sample(version), keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-000000000030.dlt", "ckpt-000000000040.dlt"]


def damaged(tmp_path, how):
    path = checkpoint.save(tmp_path / "run-a", sample())
    raw = bytearray(path.read_bytes())
    length = int.from_bytes(raw[8:16], "big")
    if how == "truncated":
        raw = raw[:-10]
    elif how == "flipped byte":
        raw[-1] ^= 0xFF
    elif how == "magic":
        raw[:8] = b"PICKLE!!"
    elif how == "header length":
        raw[8:16] = (10**9).to_bytes(8, "big")
    elif how == "header json":
        raw[16] = ord("[")
    elif how in ("tensor bounds", "unknown dtype", "shape vs bytes"):
        header = json.loads(raw[16 : 16 + length])
        entry = header["tensors"][0]
        if how == "tensor bounds":
            entry["offset"] = 10**6
        elif how == "unknown dtype":
            entry["dtype"] = "object"
        else:
            entry["shape"] = [99]
        text = json.dumps(header).encode()
        raw = raw[:8] + len(text).to_bytes(8, "big") + text + raw[16 + length :]
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("how", ["truncated", "flipped byte", "magic", "header length", "header json", "tensor bounds",
                                 "unknown dtype", "shape vs bytes"])
def test_damage_is_refused_with_the_file_named(tmp_path, how):
    path = damaged(tmp_path, how)
    with pytest.raises(CheckpointError, match=str(path)):
        checkpoint.load(path)


def test_newest_falls_back_past_a_damaged_file(tmp_path):
    checkpoint.save(tmp_path / "run-a", sample(5))
    newest = checkpoint.save(tmp_path / "run-a", sample(9))
    newest.write_bytes(newest.read_bytes()[:-1])
    ckpt, problems = checkpoint.newest(tmp_path, "run-a")
    assert ckpt.version == 5
    assert len(problems) == 1 and str(newest) in problems[0]


def test_newest_takes_only_the_runs_own_checkpoints(tmp_path):
    checkpoint.save(tmp_path / "run-a", sample(5))
    checkpoint.save(tmp_path / "run-b", sample(50, run_id="run-b"))
    assert checkpoint.newest(tmp_path, "run-a")[0].version == 5
    assert checkpoint.newest(tmp_path, "run-c") == (None, [])


def test_a_file_claiming_another_run_is_skipped(tmp_path):
    checkpoint.save(tmp_path / "run-a", sample(5, run_id="run-x"))
    ckpt, problems = checkpoint.newest(tmp_path, "run-a")
    assert ckpt is None and "belongs to run 'run-x'" in problems[0]


def test_a_crash_mid_write_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    checkpoint.save(tmp_path, sample(5))

    def crash(src, dst):
        raise OSError("killed before the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        checkpoint.save(tmp_path, sample(9))
    assert checkpoint.load(tmp_path / "ckpt-000000000005.dlt").version == 5
    assert not (tmp_path / "ckpt-000000000009.dlt").exists()
