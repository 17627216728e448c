"""Worker-side training math on flat parameter vectors.

The parameter server and the wire see a model as one fp32 vector (`flat_parameters`, in
`model.parameters()` order); a worker turns what it pulled into its model (`load_flat`), and
what it pushes back is either a gradient (`gradient`, local steps H = 1) or the parameter
change of H inner Adam steps (`LocalSteps`, H > 1, as in DiLoCo). Losses are mean next-byte
cross-entropy in nats per byte (ln 256 = 5.545 for a model that knows nothing).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn import functional as F

from .data import Batch


def set_threads(count: int | None) -> int:
    """Use `count` intra-op threads (`Settings.torch_threads`, from TORCH_THREADS; None: every
    core) and return the number set. N workers sharing C cores should each take about C / N:
    oversubscribed BLAS threads spin and slow every process down."""
    threads = count or len(os.sched_getaffinity(0))  # the cores this process may run on (cpuset aware)
    torch.set_num_threads(threads)
    return threads


def fair_share(processes: int) -> int:
    """Intra-op threads for one of `processes` torch processes sharing this host's cores (at least 1): the
    default when TORCH_THREADS is unset, since the testbed runs the PS and every worker on one host. Measured
    on 2 cores, 3 processes of the 50 K-parameter LSTM: 22-25 ms per step with 1 thread each, 150-290 ms
    with 2 (oversubscribed threads spin and wait on each other)."""
    return max(1, len(os.sched_getaffinity(0)) // processes)


def flat_parameters(model: nn.Module) -> torch.Tensor:
    """A detached fp32 copy of every parameter, concatenated: [count_parameters(model)]."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def load_flat(model: nn.Module, flat: torch.Tensor) -> None:
    """Copy `flat` into the model's parameters in place (the tensors stay the same objects, so an
    optimizer built on them keeps its state). Raises ValueError if the length or dtype is wrong."""
    expected = sum(p.numel() for p in model.parameters())
    if flat.dim() != 1 or flat.numel() != expected or flat.dtype != torch.float32:
        raise ValueError(
            f"flat parameters: expected float32 [{expected}], got {flat.dtype} {list(flat.shape)}"
        )
    offset = 0
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(flat[offset : offset + p.numel()].view_as(p))
            offset += p.numel()


def loss_of(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean next-byte cross-entropy of one batch, x, y: [B, T] int64."""
    logits = model(x)  # [B, T, 256]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(flat gradient [count_parameters], loss) of one batch at the model's current parameters.
    The model is not changed."""
    model.train()
    model.zero_grad(set_to_none=True)
    loss = loss_of(model, x, y)
    loss.backward()
    grad = flat_gradient(model)
    model.zero_grad(set_to_none=True)
    return grad, loss.item()


def flat_gradient(model: nn.Module) -> torch.Tensor:
    """The gradients the last backward left, flat [count_parameters] (a copy)."""
    return torch.cat([_grad_or_zeros(p).reshape(-1) for p in model.parameters()])


class LocalSteps:
    """H inner Adam steps per round, pushed as one parameter delta (DiLoCo's inner loop).

    The Adam moments live in this object's optimizer, built once on the model's own parameter
    tensors, and persist across rounds: `load_flat` between rounds replaces the parameter values
    in place, which leaves the moments attached. Keep one LocalSteps per worker for the whole run.
    """

    def __init__(self, model: nn.Module, inner_lr: float):
        self.model = model
        self.optimizer = torch.optim.Adam(model.parameters(), lr=inner_lr)

    def run(self, batches: Iterator[Batch], steps: int) -> tuple[torch.Tensor, float]:
        """(delta = parameters after - before [count_parameters], mean training loss of the steps).
        The model is left at the new parameters."""
        start = flat_parameters(self.model)
        self.model.train()
        total = 0.0
        for _ in range(steps):
            x, y = next(batches)
            self.optimizer.zero_grad(set_to_none=True)
            loss = loss_of(self.model, x, y)
            loss.backward()
            self.optimizer.step()
            total += loss.item()
        return flat_parameters(self.model) - start, total / steps


@torch.no_grad()
def evaluate(model: nn.Module, val_batches: list[Batch]) -> float:
    """Mean cross-entropy over the validation batches, nats per byte."""
    model.eval()
    return sum(loss_of(model, x, y).item() for x, y in val_batches) / len(val_batches)


def _grad_or_zeros(p: nn.Parameter) -> torch.Tensor:
    # A parameter outside the graph of this loss has no gradient; it still holds its place.
    return p.grad if p.grad is not None else torch.zeros_like(p)
