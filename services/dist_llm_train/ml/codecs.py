"""Uplink codecs: a worker's flat float32 update x [d] -> `Encoded` arrays the wire frames -> x_hat [d] on the PS.

`encode(x, codec, ratio)` on the worker, `check_encoded(enc, numel)` then `decode(enc)` on the PS. `Encoded.arrays`
holds 1-D contiguous tensors in the order of `LAYOUT[codec]`; the wire sends each as raw little-endian bytes and
rebuilds it with the dtype named there (the length follows from the byte count).

| codec | arrays (name: dtype[length])                       | error of x_hat                                  |
|-------|----------------------------------------------------|-------------------------------------------------|
| none  | values: float32[d]                                 | exact                                           |
| fp16  | values: float16[d]                                 | <= max(|x| 2^-11, 2^-25) per coordinate          |
| int8  | scale: float32[1], values: int8[d] in [-127, 127]  | <= scale/2 + max|x| 2^-23, scale = max|x| / 127 |
| topk  | indices: int32[k] ascending, values: float16[k]    | kept: as fp16; dropped: x_hat = 0, |x_j| <= every kept |x| |

fp16 rounds to nearest with an 11-bit significand (relative error 2^-11) down to 2^-14, then subnormals spaced 2^-24
(absolute error 2^-25); above 65504 it overflows to inf, so fp16 and topk refuse such an x instead of sending inf.
int8's second term is float32 rounding of x / scale and q * scale. topk keeps k = max(1, min(d, round(ratio d)))
coordinates of largest |x| (ties: whichever np.argpartition keeps), so the dropped part has
||x - x_hat||^2 <= (1 - k/d) ||x||^2: what error feedback carries to the next update.

Payload bytes per update for d = 1,000,000 (what `nbytes` returns; framing excluded), and the time it takes on a
10 Mbit/s uplink (bytes * 8 / 10e6):

| codec      | bytes     | of dense | at 10 Mbit/s |
|------------|-----------|----------|--------------|
| none       | 4,000,000 | 100 %    | 3.2 s        |
| fp16       | 2,000,000 | 50 %     | 1.6 s        |
| int8       | 1,000,004 | 25 %     | 0.80 s       |
| topk 1 %   | 60,000    | 1.5 %    | 48 ms        |
| topk 0.1 % | 6,000     | 0.15 %   | 4.8 ms       |
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, get_args

import numpy as np
import torch
from torch import Tensor

from .config import CodecName

FP16_MAX = 65504.0

LAYOUT: dict[str, tuple[tuple[str, torch.dtype], ...]] = {
    "none": (("values", torch.float32),),
    "fp16": (("values", torch.float16),),
    "int8": (("scale", torch.float32), ("values", torch.int8)),
    "topk": (("indices", torch.int32), ("values", torch.float16)),
}


@dataclass(frozen=True)
class Encoded:
    codec: CodecName
    numel: int  # d: length of the decoded update
    arrays: dict[str, Tensor]  # name -> 1-D contiguous tensor, names and dtypes as LAYOUT[codec]


@dataclass(frozen=True)
class Codec:
    encode: Callable[[Tensor, float], dict[str, Tensor]]  # (x, ratio) -> arrays; ratio is used by topk only
    decode: Callable[[dict[str, Tensor], int], Tensor]  # (arrays, numel) -> x_hat float32 [numel]


def all_finite(x: Tensor) -> bool:
    """No NaN and no Inf in a floating tensor. min and max propagate NaN, so one fused reduction decides:
    1 M values, 1 thread: 0.2 ms, where isfinite(x).all() materialises a bool tensor and takes 3.5 ms
    (float16 through float32: 5-15 ms), which would dominate the PS's handling of a dense update."""
    if x.numel() == 0:
        return True
    low, high = torch.aminmax(x)
    return bool(low > -math.inf) and bool(high < math.inf)


def to_fp16(x: Tensor) -> Tensor:
    if x.abs().max() > FP16_MAX:
        raise ValueError(f"update has |x| up to {x.abs().max():.4g}, above the float16 range {FP16_MAX}: use int8 or none")
    return x.half()


def topk_count(numel: int, ratio: float) -> int:
    """k = max(1, min(d, round(ratio * d))): at least one coordinate, so d < 1/ratio still sends something."""
    return max(1, min(numel, round(ratio * numel)))


def int8_encode(x: Tensor, ratio: float) -> dict[str, Tensor]:
    scale = x.abs().max() / 127
    q = torch.zeros_like(x) if scale == 0 else (x / scale).round().clamp(-127, 127)
    return {"scale": scale.reshape(1), "values": q.to(torch.int8)}


SAMPLE = 8192  # |x| values read to place topk's candidate threshold


def topk_indices(magnitude: Tensor, k: int) -> Tensor:
    """Sorted int64 indices of the k largest values of `magnitude` (>= 0), exactly.

    A full selection over d values is the PS's largest cost on a compressed downlink (one delta per ACK):
    numpy's argpartition over 938,240 values took 9.6 ms in the image (torch.topk 8.7 ms, 1 thread). So a
    threshold t first: the value that about 2k of d exceed, read off a strided sample of SAMPLE values
    (no RNG: a training run's random streams stay untouched); then one comparison pass (1.5 ms) and an exact
    partition of the ~2k candidates. Exact because if at least k values reach t, the k-th largest does too,
    so every one of the top k is a candidate; with fewer than k candidates (a sample that misjudged t) the
    full partition runs. t = 0 (a delta mostly zeros) takes the nonzero values as the candidates, and when
    there are fewer than k of them, all of them plus zeros (ties) for the rest."""
    d = magnitude.numel()
    if d >= 4 * SAMPLE and 20 * k <= d:
        sample = magnitude[:: d // SAMPLE]
        above = min(sample.numel(), 2 * k * sample.numel() // d + 8)  # sample values to leave above t
        t = torch.kthvalue(sample, sample.numel() - above + 1).values
        candidates = torch.nonzero(magnitude >= t if t > 0 else magnitude > 0).squeeze(1)
        if candidates.numel() >= k:
            picked = np.argpartition(magnitude[candidates].neg_().numpy(), k - 1)[:k]
            return candidates[torch.from_numpy(picked)].sort().values
        if t == 0:  # fewer than k nonzeros: all of them, and zeros (all tied) for the rest
            zeros = torch.nonzero(magnitude == 0).squeeze(1)[: k - candidates.numel()]
            return torch.cat([candidates, zeros]).sort().values
    # The k smallest of -|x|, not the k largest of |x|: numpy's introselect for the top ranks took 50-70 ms
    # on deltas that are 95-99 % zeros, this form a few ms on every input tried.
    return torch.from_numpy(np.argpartition(magnitude.neg().numpy(), k - 1)[:k]).sort().values


def topk_encode(x: Tensor, ratio: float) -> dict[str, Tensor]:
    kept = topk_indices(x.abs(), topk_count(x.numel(), ratio))
    return {"indices": kept.to(torch.int32), "values": to_fp16(x[kept])}


def topk_decode(arrays: dict[str, Tensor], numel: int) -> Tensor:
    x_hat = torch.zeros(numel)
    x_hat[arrays["indices"].long()] = arrays["values"].float()
    return x_hat


CODECS: dict[str, Codec] = {
    "none": Codec(lambda x, ratio: {"values": x.clone()}, lambda arrays, numel: arrays["values"].clone()),
    "fp16": Codec(lambda x, ratio: {"values": to_fp16(x)}, lambda arrays, numel: arrays["values"].float()),
    "int8": Codec(int8_encode, lambda arrays, numel: arrays["values"].float() * arrays["scale"]),
    "topk": Codec(topk_encode, topk_decode),
}
if set(CODECS) != set(get_args(CodecName)) or set(LAYOUT) != set(CODECS):
    raise ImportError(f"CODECS {sorted(CODECS)} / LAYOUT {sorted(LAYOUT)} do not match CodecName {sorted(get_args(CodecName))}")


def encode(x: Tensor, codec: CodecName, ratio: float) -> Encoded:
    """Compress a worker's update. ValueError if the codec is unknown, x is not a finite, non-empty 1-D float32
    tensor, or x does not fit the codec (fp16 / topk values above 65504)."""
    if x.dim() != 1 or x.dtype != torch.float32 or x.numel() == 0:
        raise ValueError(f"an update must be a non-empty 1-D float32 tensor, got {x.dtype} {list(x.shape)}")
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; known: {', '.join(CODECS)}")
    if not all_finite(x):
        raise ValueError("update has NaN or Inf values: nothing to send")
    return Encoded(codec, x.numel(), CODECS[codec].encode(x.contiguous(), ratio))


def decode(enc: Encoded) -> Tensor:
    """x_hat as float32 [numel]; `enc` must come from `encode` or have passed `check_encoded`."""
    return CODECS[enc.codec].decode(enc.arrays, enc.numel)


def nbytes(enc: Encoded) -> int:
    """Payload bytes: the sum of the arrays' sizes (the wire's headers come on top)."""
    return sum(a.numel() * a.element_size() for a in enc.arrays.values())


def payload_bytes(codec: CodecName, numel: int, ratio: float) -> int:
    """What `nbytes(encode(x, codec, ratio))` is for any x of `numel` values, from LAYOUT alone: top-k's arrays
    hold k = topk_count(numel, ratio) values, int8's scale one, every other array numel."""
    def length(name: str) -> int:
        return topk_count(numel, ratio) if codec == "topk" else 1 if name == "scale" else numel
    return sum(length(name) * torch.empty(0, dtype=dtype).element_size() for name, dtype in LAYOUT[codec])


def check_encoded(enc: Encoded, numel: int) -> None:
    """What the PS runs on every received update before `decode`: ValueError naming the codec and array if
    the arrays do not match LAYOUT, the lengths do not fit `numel` (the model's size), a value is NaN or Inf,
    an int8 value is -128 or its scale negative, or top-k indices are not ascending, unique and in range."""
    layout = LAYOUT.get(enc.codec)
    if layout is None:
        raise ValueError(f"unknown codec {enc.codec!r}")
    where = f"codec {enc.codec}"
    if enc.numel != numel:
        raise ValueError(f"{where}: update has {enc.numel} values, the model has {numel}")
    if list(enc.arrays) != [name for name, _ in layout]:
        raise ValueError(f"{where}: arrays {list(enc.arrays)}, expected {[name for name, _ in layout]}")
    for name, dtype in layout:
        array = enc.arrays[name]
        if array.dtype != dtype or array.dim() != 1:
            raise ValueError(f"{where}: {name} is {array.dtype} {list(array.shape)}, expected 1-D {dtype}")
        if array.is_floating_point() and not all_finite(array):
            raise ValueError(f"{where}: {name} has NaN or Inf values")
    lengths = {name: enc.arrays[name].numel() for name, _ in layout}
    if enc.codec == "topk":
        if not lengths["indices"] == lengths["values"] <= numel:
            raise ValueError(f"{where}: array lengths {lengths}, expected equal and at most {numel}")
    elif lengths != (expected := {name: 1 if name == "scale" else numel for name, _ in layout}):
        raise ValueError(f"{where}: array lengths {lengths}, expected {expected}")
    if enc.codec == "int8" and (enc.arrays["scale"][0] < 0 or enc.arrays["values"].min() < -127):
        raise ValueError(f"{where}: scale must be >= 0 and values in [-127, 127]")
    if enc.codec == "topk":
        check_indices(enc.arrays["indices"], numel, where)


def check_indices(indices: Tensor, numel: int, where: str) -> None:
    if indices.numel() and (indices[0] < 0 or indices[-1] >= numel or (indices.diff() <= 0).any()):
        raise ValueError(f"{where}: indices must be ascending, unique and in [0, {numel})")


class ErrorFeedback:
    """One worker's memory of what compression dropped (error feedback, as in EF-SGD).

    compress(x, codec, ratio) sends C(x + residual) and keeps residual = (x + residual) - decode(C(x + residual)),
    so over many updates the sum of what was sent equals the sum of the x minus the current residual: nothing is
    lost, only delayed. The residual starts at zero. It is a float32 vector whatever the codec, so the codec and
    ratio may change from one update to the next (compression.policy adaptive) and the identity still holds; an
    update sent with codec none carries the whole residual out and leaves it zero.
    """

    def __init__(self):
        self.residual: Tensor | None = None

    def compress(self, x: Tensor, codec: CodecName, ratio: float) -> Encoded:
        corrected = x if self.residual is None else x + self.residual
        enc = encode(corrected, codec, ratio)
        self.residual = corrected - decode(enc)
        return enc
