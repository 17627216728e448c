"""Codecs: round trips within their stated bounds, payload sizes, the PS-side checks, error feedback, the registry
and the codec objects' interface (make, check, add_into, sent_ratio, payload_bytes)."""

from typing import get_args

import pytest
import torch

from dist_llm_train.ml.codecs import (
    CODECS,
    LAYOUT,
    ErrorFeedback,
    Int8,
    NonFinite,
    TopK,
    add_into,
    decode,
    encode,
    make,
    nbytes,
    settings_of,
    topk_count,
    topk_indices,
)
from dist_llm_train.ml.config import CodecName

SIZES = [1, 2, 7, 50, 1000, 20_011]  # 1, 7 and 50 are below 1 / ratio for top-k 1 %


def sample(d: int, seed: int = 0) -> torch.Tensor:
    """Values over many magnitudes, both signs, and exact zeros: the cases rounding treats differently."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(d, generator=generator) * 10 ** torch.randint(-9, 3, (d,), generator=generator).float()
    x[::5] = 0.0
    return x


def fp16_bound(x: torch.Tensor) -> torch.Tensor:
    return torch.maximum(x.abs() * 2**-11, torch.tensor(2**-25))


@pytest.mark.parametrize("d", SIZES)
def test_none_is_exact(d):
    x = sample(d)
    assert torch.equal(decode(encode(x, "none", 0.01)), x)


@pytest.mark.parametrize("d", SIZES)
def test_fp16_error_is_within_half_an_ulp(d):
    x = sample(d)
    assert ((decode(encode(x, "fp16", 0.01)) - x).abs() <= fp16_bound(x)).all()


@pytest.mark.parametrize("d", SIZES)
def test_int8_error_is_within_half_a_scale_step(d):
    x = sample(d)
    enc = encode(x, "int8", 0.01)
    scale = x.abs().max() / 127
    assert enc.arrays["scale"].item() == pytest.approx(scale.item(), rel=1e-7)
    assert ((decode(enc) - x).abs() <= scale / 2 + x.abs().max() * 2**-23).all()


def test_int8_of_zeros_is_zeros():
    enc = encode(torch.zeros(5), "int8", 0.01)
    assert enc.arrays["scale"].item() == 0.0 and torch.equal(decode(enc), torch.zeros(5))


@pytest.mark.parametrize("d", SIZES)
@pytest.mark.parametrize("ratio", [0.01, 0.1, 1.0])
def test_topk_keeps_the_largest_and_drops_the_rest(d, ratio):
    x = sample(d)
    enc = encode(x, "topk", ratio)
    x_hat = decode(enc)
    kept = enc.arrays["indices"].long()
    k = topk_count(d, ratio)
    assert kept.numel() == k >= 1
    dropped = torch.ones(d, dtype=torch.bool)
    dropped[kept] = False
    assert ((x_hat[kept] - x[kept]).abs() <= fp16_bound(x[kept])).all()
    assert (x_hat[dropped] == 0).all()
    if dropped.any():
        assert x[dropped].abs().max() <= x[kept].abs().min()
    assert (x - x_hat)[dropped].square().sum() <= (1 - k / d) * x.square().sum()


def magnitudes(kind: str, d: int = 200_000) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(d, generator=g)
    if kind == "sparse 2 %":  # a downlink delta: most coordinates did not move
        x = x * (torch.rand(d, generator=g) < 0.02)
    elif kind == "sparse 0.5 %":  # fewer nonzeros than k = 1 %
        x = x * (torch.rand(d, generator=g) < 0.005)
    elif kind == "zeros":
        x = torch.zeros(d)
    elif kind == "layered":  # a strided sample sees one block far smaller than the other
        x[: d // 2] *= 1e-4
    elif kind == "ties":
        x = torch.randint(0, 3, (d,), generator=g).float()
    return x.abs()


@pytest.mark.parametrize("kind", ["gaussian", "sparse 2 %", "sparse 0.5 %", "zeros", "layered", "ties"])
@pytest.mark.parametrize("k", [1, 37, 2000, 10_000])
def test_topk_indices_are_exactly_a_top_k_set(kind, k):
    m = magnitudes(kind)

    picked = topk_indices(m, k)

    assert picked.dtype == torch.int64 and picked.numel() == k
    assert bool((picked[1:] > picked[:-1]).all())  # sorted, no index twice
    kth = m.sort(descending=True).values[k - 1]  # every pick reaches the k-th largest, every other value stays at or below it
    rest = torch.ones_like(m, dtype=torch.bool)
    rest[picked] = False
    assert bool((m[picked] >= kth).all()) and bool((m[rest] <= kth).all())


@pytest.mark.parametrize(("d", "ratio", "k"), [(1, 0.01, 1), (50, 0.01, 1), (250, 0.01, 2), (1_000_000, 0.01, 10_000), (10, 1.0, 10)])
def test_topk_count(d, ratio, k):
    assert topk_count(d, ratio) == k


def test_payload_bytes_for_one_million_parameters():
    # The table in codecs.py's docstring.
    x = torch.randn(1_000_000, generator=torch.Generator().manual_seed(0))
    sizes = {codec: nbytes(encode(x, codec, 0.01)) for codec in LAYOUT}
    assert sizes == {"none": 4_000_000, "fp16": 2_000_000, "int8": 1_000_004, "topk": 60_000}
    assert nbytes(encode(x, "topk", 0.001)) == 6_000


@pytest.mark.parametrize("codec", list(LAYOUT))
def test_encoded_arrays_follow_the_layout(codec):
    enc = encode(sample(100), codec, 0.1)
    assert [(name, a.dtype) for name, a in enc.arrays.items()] == list(LAYOUT[codec])
    assert all(a.dim() == 1 and a.is_contiguous() for a in enc.arrays.values())
    make(codec).check(enc.arrays, 100)


def test_encode_does_not_alias_its_input():
    x = torch.ones(4)
    enc = encode(x, "none", 0.01)
    x.zero_()
    assert torch.equal(decode(enc), torch.ones(4))


@pytest.mark.parametrize(
    ("x", "codec", "message"),
    [
        (torch.tensor([1.0, float("nan")]), "none", "NaN or Inf"),
        (torch.tensor([1.0, float("inf")]), "int8", "NaN or Inf"),
        (torch.tensor([1.0, 7e4]), "fp16", "float16 range"),
        (torch.tensor([1.0, 7e4]), "topk", "float16 range"),
        (torch.zeros(0), "none", "non-empty 1-D float32"),
        (torch.zeros(2, 2), "none", "non-empty 1-D float32"),
        (torch.zeros(3, dtype=torch.float64), "fp16", "non-empty 1-D float32"),
        (torch.zeros(3), "zstd", "unknown codec 'zstd'; known: none, fp16, int8, topk"),
    ],
)
def test_encode_refuses_what_it_cannot_send(x, codec, message):
    with pytest.raises(ValueError, match=message):
        encode(x, codec, 0.5)


def forged(codec: str, **arrays: torch.Tensor) -> tuple[str, dict[str, torch.Tensor]]:
    return codec, arrays


@pytest.mark.parametrize(
    ("forgery", "message"),
    [
        (forged("gzip", values=torch.zeros(4)), "unknown codec"),
        (forged("none", values=torch.zeros(4, dtype=torch.float64)), "values is torch.float64"),
        (forged("none", values=torch.zeros(3)), "array lengths"),
        (forged("none", values=torch.tensor([0.0, 1.0, float("nan"), 0.0])), "values has NaN or Inf"),
        (forged("fp16", values=torch.tensor([0.0, float("inf"), 0.0, 0.0]).half()), "values has NaN or Inf"),
        (forged("int8", values=torch.zeros(4, dtype=torch.int8)), "arrays \\['values'\\]"),
        (forged("int8", scale=torch.tensor([-1.0]), values=torch.zeros(4, dtype=torch.int8)), "scale must be >= 0"),
        (forged("int8", scale=torch.tensor([1.0]), values=torch.tensor([-128, 0, 0, 0], dtype=torch.int8)), "\\[-127, 127\\]"),
        (forged("int8", scale=torch.tensor([1.0, 2.0]), values=torch.zeros(4, dtype=torch.int8)), "array lengths"),
        (forged("topk", indices=torch.tensor([0, 1], dtype=torch.int32), values=torch.zeros(1).half()), "array lengths"),
        (forged("topk", indices=torch.arange(5, dtype=torch.int32), values=torch.zeros(5).half()), "at most 4"),
        (forged("topk", indices=torch.tensor([1, 4], dtype=torch.int32), values=torch.zeros(2).half()), "in \\[0, 4\\)"),
        (forged("topk", indices=torch.tensor([-1, 2], dtype=torch.int32), values=torch.zeros(2).half()), "in \\[0, 4\\)"),
        (forged("topk", indices=torch.tensor([2, 2], dtype=torch.int32), values=torch.zeros(2).half()), "ascending, unique"),
        (forged("topk", indices=torch.tensor([3, 1], dtype=torch.int32), values=torch.zeros(2).half()), "ascending, unique"),
        (forged("topk", indices=torch.tensor([[1]], dtype=torch.int32), values=torch.zeros(1).half()), "expected 1-D"),
    ],
)
def test_check_refuses_malformed_updates(forgery, message):
    codec, arrays = forgery
    with pytest.raises(ValueError, match=message):
        make(codec).check(arrays, 4)


def test_error_feedback_sends_everything_eventually():
    # Sum of what was sent + the residual = sum of the inputs, whatever was dropped on the way.
    memory = ErrorFeedback()
    inputs = torch.randn(20, 50, generator=torch.Generator().manual_seed(1))
    sent = sum(decode(memory.compress(x, "topk", 0.1)) for x in inputs)
    assert torch.allclose(sent + memory.residual, inputs.sum(dim=0), atol=1e-5)


def test_error_feedback_survives_codec_switches():
    # compression.policy adaptive changes codec and ratio between updates: the identity holds across every
    # switch, a dense update empties the residual, and a top-k update after it starts from zero again.
    memory = ErrorFeedback()
    inputs = torch.randn(8, 200, generator=torch.Generator().manual_seed(2))
    plan = [("topk", 0.01), ("topk", 0.2), ("int8", 1.0), ("topk", 0.05), ("fp16", 1.0), ("none", 1.0),
            ("topk", 0.01), ("int8", 1.0)]
    sent = torch.zeros(200)
    for i, (x, (codec, ratio)) in enumerate(zip(inputs, plan)):
        sent += decode(memory.compress(x, codec, ratio))
        assert torch.allclose(sent + memory.residual, inputs[: i + 1].sum(dim=0), atol=1e-5), (i, codec)
    before_dense = ErrorFeedback()
    before_dense.compress(inputs[0], "topk", 0.01)
    assert before_dense.residual.abs().sum() > 0
    before_dense.compress(inputs[1], "none", 1.0)
    assert torch.equal(before_dense.residual, torch.zeros(200))


def descend(targets: torch.Tensor, lr: float, steps: int, error_feedback: bool, ratio: float = 0.05) -> float:
    """Workers i hold f_i(w) = |w - t_i|^2 / 2 and push top-k compressed gradients; the PS applies their mean.

    Returns the objective's excess over its optimum: |w - mean(t_i)|^2 / 2.
    """
    w = torch.zeros(targets.shape[1])
    memories = [ErrorFeedback() for _ in targets]
    for _ in range(steps):
        grads = [w - t for t in targets]
        sent = [m.compress(g, "topk", ratio) if error_feedback else encode(g, "topk", ratio) for m, g in zip(memories, grads)]
        w = w - lr * torch.stack([decode(e) for e in sent]).mean(dim=0)
    return 0.5 * (w - targets.mean(dim=0)).square().sum().item()


GEN = torch.Generator().manual_seed(0)
TARGET = torch.randn(100, generator=GEN)
SKEW = torch.randn(100, generator=GEN)  # how far each worker's shard pulls from the common optimum
START = 0.5 * TARGET.square().sum().item()  # excess at w = 0


def test_topk_with_error_feedback_converges_on_a_quadratic():
    # One worker, 5 of 100 coordinates per step. With feedback: to 1e-9 of the start in 200 steps; without,
    # top-k is greedy coordinate descent moving 5 coordinates by lr * g and is still above 1 % of the start.
    with_feedback = descend(TARGET.unsqueeze(0), lr=0.1, steps=200, error_feedback=True)
    without = descend(TARGET.unsqueeze(0), lr=0.1, steps=200, error_feedback=False)
    assert with_feedback < 1e-9 * START
    assert without > 0.01 * START


def test_without_error_feedback_heterogeneous_workers_stall():
    # Two workers whose optima are t + c and t - c: at the common optimum t their gradients are -c and +c,
    # so top-k keeps picking the coordinates where |c| is largest; their means cancel and every other
    # coordinate is never sent. Without feedback the excess stalls near 40 % of the start whatever the
    # step; with feedback the dropped coordinates accumulate until sent, and it falls below 2 % (its floor
    # shrinks with the step: the residual each worker still holds is of the size of c).
    targets = torch.stack([TARGET + SKEW, TARGET - SKEW])
    assert descend(targets, lr=0.03, steps=200, error_feedback=True) < 0.02 * START
    for lr in (0.1, 0.03):
        assert descend(targets, lr=lr, steps=200, error_feedback=False) > 0.3 * START


def test_the_registry_is_keyed_by_the_config_names_and_builds_codecs_with_their_own_settings():
    assert list(CODECS) == list(get_args(CodecName)) and list(LAYOUT) == list(CODECS)
    assert all(CODECS[name].name == name and LAYOUT[name] == CODECS[name].layout for name in CODECS)
    assert {name: settings_of(name) for name in CODECS} == {"none": (), "fp16": (), "int8": (), "topk": ("ratio",)}
    assert make("topk", ratio=0.25) == TopK(0.25) and make("int8", ratio=0.25) == Int8()
    with pytest.raises(ValueError, match="unknown codec 'zstd'; known: none, fp16, int8, topk"):
        make("zstd")


def test_a_receivers_topk_has_no_ratio_and_refuses_to_encode_or_size():
    x = sample(50)
    assert torch.equal(make("topk").decode(encode(x, "topk", 0.2).arrays, 50), decode(encode(x, "topk", 0.2)))
    with pytest.raises(ValueError, match="top-k needs its ratio"):
        make("topk").encode(x)
    with pytest.raises(ValueError, match="top-k needs its ratio"):
        make("topk").payload_bytes(50)


@pytest.mark.parametrize("codec", list(CODECS))
def test_add_into_is_an_in_place_add_of_the_decoded_payload(codec):
    enc = encode(sample(1000, seed=3), codec, 0.05)
    dense = sample(1000, seed=4)
    expected = dense + decode(enc)
    got = add_into(dense, enc)
    assert got is dense and torch.equal(got, expected)


@pytest.mark.parametrize(("codec", "ratio", "sent"), [("none", 0.1, 1.0), ("fp16", 0.1, 1.0), ("int8", 0.1, 1.0),
                                                       ("topk", 0.1, 0.1), ("topk", 0.003, 0.003)])
def test_sent_ratio_and_payload_bytes_are_read_off_an_encoding(codec, ratio, sent):
    enc = encode(sample(1000), codec, ratio)
    assert make(codec).sent_ratio(enc.arrays, 1000) == sent
    assert make(codec, ratio=ratio).payload_bytes(1000) == nbytes(enc)


def test_check_tells_non_finite_values_apart_from_other_faults():
    values = torch.tensor([0.0, float("nan"), 0.0, 0.0])
    with pytest.raises(NonFinite, match="codec none: values has NaN or Inf values"):
        make("none").check({"values": values}, 4)
    with pytest.raises(ValueError, match="array lengths") as refused:
        make("none").check({"values": torch.zeros(3)}, 4)
    assert not isinstance(refused.value, NonFinite)
