"""The reference single-process run shared by the golden-loss guard and the convergence test:
a small seeded LSTM trained on the bundled corpus by SGD with momentum through
`ml.train.gradient` on flat vectors (the same update the PS applies with its defaults,
lr 0.5, momentum 0.9), one thread so that float results do not depend on the core count."""

from __future__ import annotations

import torch

from dist_llm_train.ml.config import ModelConfig
from dist_llm_train.ml.data import BatchSampler, load_corpus, split, validation_batches
from dist_llm_train.ml.model import build_model
from dist_llm_train.ml.train import evaluate, flat_parameters, gradient, load_flat

MODEL = ModelConfig(embed_dim=32, hidden_dim=64, layers=1)  # 49,920 parameters
SEED, BATCH, SEQ_LEN, LR, MOMENTUM = 0, 16, 64, 0.5, 0.9


def reference_run(steps: int) -> tuple[list[float], float, float]:
    """(training loss of each step, validation loss before, validation loss after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(steps)
    finally:
        torch.set_num_threads(threads)


def _run(steps: int) -> tuple[list[float], float, float]:
    model = build_model(MODEL, SEED)
    train, val = split(load_corpus(None, SEQ_LEN), 0.05, SEQ_LEN)
    batches = BatchSampler(train, BATCH, SEQ_LEN, SEED)
    val_batches = validation_batches(val, BATCH, SEQ_LEN, count=4)
    initial = evaluate(model, val_batches)
    weights = flat_parameters(model)
    velocity = torch.zeros_like(weights)
    losses = []
    for _ in range(steps):
        grad, loss = gradient(model, *next(batches))
        velocity = MOMENTUM * velocity + grad
        weights = weights - LR * velocity
        load_flat(model, weights)
        losses.append(loss)
    return losses, initial, evaluate(model, val_batches)
