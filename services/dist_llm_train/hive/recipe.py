"""What `ml.trainer: hivemind` asks of hivemind.Optimizer, from the same `ml` section the builtin trainer reads.

Pure: no hivemind import, so the mapping and its refusals are checked (and unit-tested) wherever the config is.

Two recipes, chosen by `ml.local.steps` (H), as the builtin protocols:

| H     | builtin (PS)                                             | hivemind.Optimizer                                        |
|-------|----------------------------------------------------------|-----------------------------------------------------------|
| 1     | sync: a round averages one gradient of every worker      | use_local_updates=False: the peers accumulate gradients   |
|       | (batch_size each), then one `ml.optimizer` step          | until the swarm holds target_batch_size = workers x       |
|       |                                                          | batch_size samples, all-reduce them, and each takes the   |
|       |                                                          | same torch step (SGD or Adam with `ml.optimizer`'s lr and |
|       |                                                          | momentum / beta1, beta2 0.999, eps 1e-8: the PS's math);   |
|       |                                                          | parameters averaged every `hivemind.average_state_every`  |
|       |                                                          | epochs (hivemind's guard against drift)                   |
| H > 1 | H inner Adam steps (`local.inner_lr`) per worker, then   | use_local_updates=True: each peer steps Adam(inner_lr) on |
|       | the PS averages the deltas and takes DiLoCo's outer      | its own batches; every target_batch_size = workers x      |
|       | Nesterov step (`local.outer_lr`, `outer_momentum`)       | batch_size x H samples (H steps each) the peers average   |
|       |                                                          | their parameters: an outer step of lr 1 without momentum, |
|       |                                                          | which is all hivemind offers, so the config must say so   |

One hivemind epoch is one builtin version (one round, one outer step): `budget.max_versions` and
`budget.eval_every` count epochs. Compression (`compression.codec`) applies to every averaging, both directions
(hivemind all-reduces: each peer sends its part of every other peer's share and receives the averaged parts back):
none -> NoCompression, fp16 -> Float16Compression (IEEE half, 2 bytes per value, as ours), int8 ->
Uniform8BitQuantization (uniform 8-bit bins over +-3 standard deviations around the mean, with a 256-entry
codebook of bin means: 1 byte per value, as ours, whose single scale spans +-max|x|).

Refused, naming the field (`refusals`): what hivemind has no equivalent for. Nothing is replaced by something
weaker behind the user's back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import RunConfig
    from ..ml.config import MLConfig

COMPRESSION = {"none": "NoCompression", "fp16": "Float16Compression", "int8": "Uniform8BitQuantization"}


def refusals(ml: MLConfig) -> list[str]:
    """Every field of `ml` hivemind cannot honour, as 'field: why' lines; [] when the config maps."""
    out = []
    codec = ml.compression
    if codec.codec not in COMPRESSION:
        out.append(f"compression.codec: hivemind has no {codec.codec} compression (its averagers send every "
                   f"coordinate: {', '.join(COMPRESSION)})")
    elif codec.codec != "none" and codec.error_feedback:
        out.append("compression.error_feedback: hivemind's averagers keep no error-feedback residual "
                   "(set it to false)")
    if codec.codec != "none" and codec.downlink == "none":
        out.append("compression.downlink: hivemind's all-reduce compresses both directions (set it to 'same')")
    if ml.staleness.protocol != "sync":
        out.append(f"staleness.protocol: hivemind.Optimizer averages in rounds like 'sync'; it has no "
                   f"{ml.staleness.protocol} protocol")
    if ml.aggregation.rule != "mean" or ml.aggregation.f:
        out.append(f"aggregation.rule: hivemind averages (mean, f = 0); {ml.aggregation.rule} with f = "
                   f"{ml.aggregation.f} has no equivalent")
    if ml.privacy.clip_norm is not None or ml.privacy.noise_multiplier:
        out.append("privacy: hivemind neither clips nor adds noise to what it averages")
    if ml.attack.kind != "none":
        out.append("attack: the Byzantine workers are the builtin trainer's")
    if ml.local.steps > 1 and (ml.local.outer_lr != 1.0 or ml.local.outer_momentum != 0.0):
        out.append(f"local.outer_lr, local.outer_momentum: hivemind's local updates average parameters, an "
                   f"outer step of lr 1 without momentum (set outer_lr: 1.0, outer_momentum: 0; got "
                   f"{ml.local.outer_lr:g}, {ml.local.outer_momentum:g})")
    return out


@dataclass(frozen=True)
class Recipe:
    """The arguments of hivemind.Optimizer (and its torch optimizer) for one run; see the module table."""

    run_prefix: str  # hivemind's run_id: the DHT key prefix every peer of this run shares
    target_batch_size: int
    batch_size_per_step: int
    use_local_updates: bool
    optimizer: str  # "sgd" or "adam" (torch.optim)
    lr: float
    momentum: float  # SGD momentum, or Adam's beta1
    compression: str  # a class of hivemind.compression
    matchmaking_time_s: float
    averaging_timeout_s: float
    average_state_every: int

    def optimizer_kwargs(self) -> dict:
        if self.optimizer == "sgd":
            return {"lr": self.lr, "momentum": self.momentum}
        return {"lr": self.lr, "betas": (self.momentum, 0.999), "eps": 1e-8}


def recipe(config: RunConfig, run_id: str) -> Recipe:
    """The Recipe of a config that passed validation (so `refusals` is empty)."""
    ml = config.ml
    steps = ml.local.steps
    local = steps > 1
    return Recipe(
        run_prefix=run_id,
        target_batch_size=config.workers.count * ml.data.batch_size * steps,
        batch_size_per_step=ml.data.batch_size,
        use_local_updates=local,
        # H > 1: the worker-side Adam of ml/train.py's LocalSteps (torch defaults: beta1 0.9)
        optimizer="adam" if local else ml.optimizer.name,
        lr=ml.local.inner_lr if local else ml.optimizer.lr,
        momentum=0.9 if local else ml.optimizer.momentum,
        compression=COMPRESSION[ml.compression.codec],
        matchmaking_time_s=ml.hivemind.matchmaking_time_s,
        averaging_timeout_s=ml.staleness.sync_timeout_s,
        average_state_every=1 if local else ml.hivemind.average_state_every,
    )
