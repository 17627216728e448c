"""Byte-level language models: an LSTM (the default) and a tiny causal transformer.

Both map bytes to next-byte logits with the same interface, so the rest of ML mode sees only
`model(x) -> logits`. Shapes: B = batch, T = sequence length, V = 256 byte values,
E = `embed_dim`, H = `hidden_dim`.

Parameter count of the default LSTM (E 64, H 256, 2 layers), which sets the bytes of a dense
fp32 update (4 bytes each, about 3.75 MB):
    embedding 256*64                          16,384
    layer 1   4*256*(64+256) + 2*4*256       329,728   (input, recurrent weights; two biases)
    layer 2   4*256*(256+256) + 2*4*256      526,336
    head      256*256 + 256                   65,792
    total                                    938,240
"""

from __future__ import annotations

import math
from typing import get_args

import torch
from torch import nn

from .config import ModelConfig

VOCAB = 256  # one token per byte value: any file is valid input, no tokenizer to ship


class LSTMLanguageModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, cfg.embed_dim)
        self.lstm = nn.LSTM(cfg.embed_dim, cfg.hidden_dim, num_layers=cfg.layers, batch_first=True)
        self.head = nn.Linear(cfg.hidden_dim, VOCAB)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)  # [B, T] -> [B, T, E]
        h, _ = self.lstm(h)  # [B, T, H]; every sequence starts from a zero state
        return self.head(h)  # [B, T, V]


class TransformerLanguageModel(nn.Module):
    """Pre-norm causal transformer; sinusoidal positions, so no maximum sequence length."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, cfg.embed_dim)
        self.project = nn.Linear(cfg.embed_dim, cfg.hidden_dim)  # E -> H, as the LSTM's input layer
        layer = nn.TransformerEncoderLayer(
            cfg.hidden_dim, cfg.heads, dim_feedforward=4 * cfg.hidden_dim, dropout=0.0,
            batch_first=True, norm_first=True,
        )
        self.blocks = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.hidden_dim)
        self.head = nn.Linear(cfg.hidden_dim, VOCAB)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[1]
        h = self.project(self.embed(x))  # [B, T] -> [B, T, E] -> [B, T, H]
        h = h + sinusoidal_positions(T, h.shape[2])  # [T, H] broadcast over B
        causal = nn.Transformer.generate_square_subsequent_mask(T)  # [T, T], -inf above the diagonal
        h = self.blocks(h, mask=causal, is_causal=True)  # [B, T, H]
        return self.head(self.norm(h))  # [B, T, V]


def sinusoidal_positions(length: int, width: int) -> torch.Tensor:
    """[length, width] fixed position code of "Attention Is All You Need" (width rounded up to even)."""
    position = torch.arange(length, dtype=torch.float32)[:, None]  # [T, 1]
    frequency = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(10000.0) / width))
    angle = position * frequency  # [T, ceil(width / 2)]
    return torch.stack([angle.sin(), angle.cos()], dim=2).flatten(1)[:, :width]  # interleaved sin, cos


ARCHITECTURES: dict[str, type[nn.Module]] = {
    "lstm": LSTMLanguageModel,
    "transformer": TransformerLanguageModel,
}
if set(ARCHITECTURES) != set(get_args(ModelConfig.model_fields["arch"].annotation)):
    raise ImportError("ml.model.ARCHITECTURES does not match the choices of ModelConfig.arch")


def build_model(cfg: ModelConfig, seed: int) -> nn.Module:
    """The model `cfg` names, initialised from `seed` alone: every process that builds it with the
    same (cfg, seed) holds bit-identical parameters, and the global torch RNG is left untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ARCHITECTURES[cfg.arch](cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
