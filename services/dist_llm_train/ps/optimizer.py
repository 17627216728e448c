"""Server-side optimizers: one aggregated update -> one step on the flat float32 parameter vector, in place.

| optimizer | update it takes (workers send)        | step (s = lr_scale, e.g. staleness.lr_scale)                 |
|-----------|----------------------------------------|-------------------------------------------------------------|
| sgd       | gradient g (H = 1)                     | buf = mu buf + g;  p -= lr s buf                             |
| adam      | gradient g (H = 1)                     | m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; bias-corrected;  |
|           |                                        | p -= lr s m_hat / (sqrt(v_hat) + eps), b1 = momentum, b2 = 0.999, eps = 1e-8 |
| outer     | parameter delta = new - old (H > 1)    | DiLoCo: outer gradient g = -delta (old - new), then Nesterov |
|           |                                        | buf = mu buf + g;  p -= lr s (g + mu buf), lr 0.7, mu 0.9    |

The sign matters for the outer step: a delta points downhill already, so p moves along +delta; the first outer
step with zero momentum moves p by lr (1 + mu) delta = 1.33 delta with the defaults.

Each optimizer has `step`, `state` (named tensors only, for checkpoints: no pickle) and `load_state`, which
raises ValueError naming the first missing, unexpected or mis-shaped tensor and changes nothing then.
"""

from __future__ import annotations

from typing import Protocol, get_args

import torch
from torch import Tensor

from ..ml.config import MLConfig, OptimizerConfig


class ServerOptimizer(Protocol):
    def step(self, params: Tensor, update: Tensor, lr_scale: float = 1.0) -> None:
        """Apply `update` to `params` in place; ValueError if their shapes differ."""

    def state(self) -> dict[str, Tensor]:
        """Copies of the optimizer's tensors, for a checkpoint."""

    def load_state(self, state: dict[str, Tensor]) -> None:
        """Restore from `state()` of an optimizer of the same kind and size."""


def check_same_shape(params: Tensor, update: Tensor) -> None:
    if update.shape != params.shape:
        raise ValueError(f"update has shape {list(update.shape)}, parameters {list(params.shape)}")


def checked_state(state: dict[str, Tensor], current: dict[str, Tensor]) -> dict[str, Tensor]:
    """Clones of `state`'s tensors if names, dtypes and shapes match `current`; ValueError naming the first that does not."""
    if set(state) != set(current):
        raise ValueError(f"optimizer state has tensors {sorted(state)}, expected {sorted(current)}")
    for name, tensor in current.items():
        got = state[name]
        if got.dtype != tensor.dtype or got.shape != tensor.shape:
            raise ValueError(f"optimizer state {name}: {got.dtype} {list(got.shape)}, expected {tensor.dtype} {list(tensor.shape)}")
    return {name: tensor.clone() for name, tensor in state.items()}


class Sgd:
    """SGD with heavy-ball momentum (PyTorch's convention: the buffer accumulates raw gradients), or Nesterov."""

    def __init__(self, numel: int, lr: float, momentum: float, nesterov: bool = False):
        self.lr = lr
        self.momentum = momentum
        self.nesterov = nesterov
        self.buf = torch.zeros(numel)

    def step(self, params: Tensor, update: Tensor, lr_scale: float = 1.0) -> None:
        check_same_shape(params, update)
        self.buf.mul_(self.momentum).add_(update)
        direction = update + self.momentum * self.buf if self.nesterov else self.buf
        params.sub_(direction, alpha=self.lr * lr_scale)

    def state(self) -> dict[str, Tensor]:
        return {"momentum_buffer": self.buf.clone()}

    def load_state(self, state: dict[str, Tensor]) -> None:
        self.buf = checked_state(state, self.state())["momentum_buffer"]


class Adam:
    def __init__(self, numel: int, lr: float, momentum: float, beta2: float = 0.999, eps: float = 1e-8):
        self.lr = lr
        self.beta1 = momentum
        self.beta2 = beta2
        self.eps = eps
        self.m = torch.zeros(numel)
        self.v = torch.zeros(numel)
        self.t = torch.zeros(1, dtype=torch.int64)

    def step(self, params: Tensor, update: Tensor, lr_scale: float = 1.0) -> None:
        check_same_shape(params, update)
        self.t += 1
        t = int(self.t)
        self.m.mul_(self.beta1).add_(update, alpha=1 - self.beta1)
        self.v.mul_(self.beta2).addcmul_(update, update, value=1 - self.beta2)
        m_hat = self.m / (1 - self.beta1**t)
        v_hat = self.v / (1 - self.beta2**t)
        params.sub_(m_hat / (v_hat.sqrt() + self.eps), alpha=self.lr * lr_scale)

    def state(self) -> dict[str, Tensor]:
        return {"exp_avg": self.m.clone(), "exp_avg_sq": self.v.clone(), "step": self.t.clone()}

    def load_state(self, state: dict[str, Tensor]) -> None:
        loaded = checked_state(state, self.state())
        self.m, self.v, self.t = loaded["exp_avg"], loaded["exp_avg_sq"], loaded["step"]


class OuterNesterov:
    """DiLoCo's outer step (Douillard et al. 2023): Nesterov SGD on the outer gradient -delta."""

    def __init__(self, numel: int, lr: float = 0.7, momentum: float = 0.9):
        self.sgd = Sgd(numel, lr, momentum, nesterov=True)

    def step(self, params: Tensor, update: Tensor, lr_scale: float = 1.0) -> None:
        self.sgd.step(params, -update, lr_scale)  # workers send new - old; the outer gradient is old - new

    def state(self) -> dict[str, Tensor]:
        return self.sgd.state()

    def load_state(self, state: dict[str, Tensor]) -> None:
        self.sgd.load_state(state)


OPTIMIZERS = {"sgd": Sgd, "adam": Adam}
if set(OPTIMIZERS) != set(get_args(OptimizerConfig.model_fields["name"].annotation)):
    raise ImportError(f"OPTIMIZERS {sorted(OPTIMIZERS)} do not match OptimizerConfig.name")


def build_optimizer(ml: MLConfig, numel: int) -> ServerOptimizer:
    """H > 1 (local.steps): workers send parameter deltas, applied by the outer Nesterov step with
    local.outer_lr / local.outer_momentum; H = 1: workers send gradients, applied by optimizer.name."""
    if ml.local.steps > 1:
        return OuterNesterov(numel, ml.local.outer_lr, ml.local.outer_momentum)
    return OPTIMIZERS[ml.optimizer.name](numel, ml.optimizer.lr, ml.optimizer.momentum)
