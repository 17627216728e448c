"""The `ml` section of a run config: model, data, protocol, aggregation, compression, budget."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ..schema import Section

Protocol = Literal["sync", "async", "adaptive"]
RuleName = Literal["mean", "median", "trimmed_mean", "krum", "multi_krum", "bulyan"]
CodecName = Literal["none", "fp16", "int8", "topk"]
AttackName = Literal["none", "sign_flip", "scaled", "gaussian", "alie", "ipm"]


class ModelConfig(Section):
    arch: Literal["lstm", "transformer"] = Field("lstm", description="byte-level LSTM or tiny causal transformer")
    embed_dim: int = Field(64, ge=1, description="byte embedding width")
    hidden_dim: int = Field(256, ge=1, description="LSTM hidden size / transformer model width")
    layers: int = Field(2, ge=1, description="LSTM or transformer layers")
    heads: int = Field(4, ge=1, description="attention heads (transformer only)")


class DataConfig(Section):
    path: str | None = Field(None, description="UTF-8 text to train on (gzip if it ends in .gz); null = the bundled corpus")
    val_fraction: float = Field(0.05, gt=0, lt=0.5, description="tail of the text held out for validation")
    seq_len: int = Field(128, ge=8, description="tokens (bytes) per training sequence")
    batch_size: int = Field(32, ge=1, description="sequences per worker step")


class StalenessConfig(Section):
    protocol: Protocol = Field("async", description="sync barrier, bounded-async, or adaptive per-worker bounds")
    bound: int = Field(4, ge=0, description="async: largest accepted staleness (PS version now - version the update was computed from)")
    sync_timeout_s: float = Field(30.0, gt=0, description="sync: a round closes after this long without the stragglers")
    min_bound: int = Field(1, ge=0, description="adaptive: lower clamp of a worker's bound")
    max_bound: int = Field(32, ge=1, description="adaptive: upper clamp of a worker's bound")
    scale_lr: bool = Field(False, description="divide the step of an update by its staleness (staleness-aware async SGD)")


class AggregationConfig(Section):
    rule: RuleName = Field("mean", description="how a window of accepted updates becomes one step")
    f: int = Field(0, ge=0, description="Byzantine updates the rule must tolerate per window")
    window: int = Field(1, ge=1, description="accepted updates aggregated into one step (sync: set by the barrier)")
    multi_krum_m: int | None = Field(None, ge=1, description="multi_krum: updates averaged after selection; null = n - f")


class CompressionConfig(Section):
    policy: Literal["fixed", "adaptive"] = Field(
        "fixed", description="fixed: every worker uses `codec` / `ratio` / `downlink`; adaptive: each worker picks its "
                             "codec and ratio, up and down, before every upload from its measured link and compute "
                             "time (ml/adaptive.py; `codec`, `ratio` and `downlink` are then not used)")
    codec: CodecName = Field("none", description="fixed: uplink codec of a worker's update")
    ratio: float = Field(0.01, gt=0, le=1, description="fixed, topk: fraction of coordinates sent")
    error_feedback: bool = Field(True, description="keep what compression dropped and add it to the next update")
    downlink: Literal["same", "none"] = Field(
        "same", description="fixed: parameters sent back: 'same' codec as a delta against the worker's replica (what "
                            "it drops goes out later), or 'none' (dense fp32: 4 bytes per parameter down, exact)")
    comm_budget: float = Field(0.5, gt=0, le=100, description="adaptive: an upload (and a download) may take at most "
                               "this times the round's compute time at the measured link rate")
    min_ratio: float = Field(0.001, gt=0, le=1, description="adaptive: the smallest top-k ratio it may pick (and the "
                             "smallest a worker may ask the PS for on its downlink)")

    @property
    def label(self) -> str:
        """What a result row says about compression: the codec, or `adaptive` when each worker picks its own."""
        return "adaptive" if self.policy == "adaptive" else self.codec


class OptimizerConfig(Section):
    name: Literal["sgd", "adam"] = Field("sgd", description="server-side optimizer applied to aggregated gradients")
    lr: float = Field(0.5, gt=0, description="server learning rate")
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd momentum (beta1 for adam)")


class LocalStepsConfig(Section):
    steps: int = Field(1, ge=1, description="H: 1 = push a gradient each step; H > 1 = push the parameter delta after H local steps")
    inner_lr: float = Field(1e-3, gt=0, description="H > 1: worker-side Adam learning rate")
    outer_lr: float = Field(0.7, gt=0, description="H > 1: PS outer Nesterov step size on the averaged delta (DiLoCo)")
    outer_momentum: float = Field(0.9, ge=0, lt=1, description="H > 1: PS outer Nesterov momentum")


class PrivacyConfig(Section):
    clip_norm: float | None = Field(None, gt=0, description="L2 clip of each update before aggregation; null = none")
    noise_multiplier: float = Field(0.0, ge=0, description="Gaussian noise std = noise_multiplier * clip_norm / window size on the aggregate")

    @model_validator(mode="after")
    def _noise_needs_clip(self) -> "PrivacyConfig":
        if self.noise_multiplier > 0 and self.clip_norm is None:
            raise ValueError("privacy.noise_multiplier > 0 needs privacy.clip_norm (the noise std is relative to it)")
        return self


class AttackConfig(Section):
    kind: AttackName = Field("none", description="what the Byzantine workers send instead of their honest update")
    workers: list[int] = Field([], description="indices of the Byzantine workers")
    scale: float = Field(10.0, gt=0, description="sign_flip / scaled / gaussian / ipm strength; alie z (below 1: worker.attacks.alie_z_max)")


class BudgetConfig(Section):
    """What ends a run (the first of: target, work budget, wall-clock cap) and how it is watched on the way.

    Equal work: a comparison gives its cells the same `max_tokens`; `max_time_s` is only the safety net.
    A run that ends without reaching the target says which limit ended it (`reason`: "budget: ..." for
    max_tokens / max_versions, "cap: ..." for max_time_s)."""

    max_versions: int = Field(300, ge=1, description="budget: stop after the PS applied this many steps")
    max_tokens: int | None = Field(None, ge=1, description="budget: stop once the applied updates were computed from "
                                   "this many training tokens (bytes): updates x local.steps x batch_size x seq_len; "
                                   "null = no token budget")
    max_time_s: float = Field(600.0, gt=0, description="cap: stop after this long (the safety net under the budget)")
    target_val_loss: float | None = Field(None, gt=0, description="stop when the validation slice's loss reaches "
                                          "this (nats/byte)")
    eval_every: int = Field(20, ge=1, description="evaluate the validation slice every this many versions ...")
    eval_every_s: float = Field(5.0, gt=0, description="... or at the first version this many seconds after the "
                                "last evaluation, whichever comes first")
    eval_slice_batches: int = Field(1, ge=1, description="batches of the fixed validation slice evaluated along the "
                                    "run (one batch of the default model: at most 3.5 % of the PS's time at the default "
                                    "schedule, ps/evaluation.py)")
    eval_batches: int = Field(4, ge=1, description="validation batches of the final evaluation (final_val_loss)")
    checkpoint_every: int = Field(50, ge=1, description="write a checkpoint every this many versions")


class HivemindConfig(Section):
    """Settings of `trainer: hivemind` that have no builtin counterpart (hive/recipe.py maps the rest)."""
    matchmaking_time_s: float = Field(5.0, gt=0, le=600, description="how long a peer waits for others to join an "
                                      "averaging round (hivemind: 3-5 s for small local runs, 10-15 s over the internet)")
    average_state_every: int = Field(1, ge=1, description="local.steps 1: also average the parameters every this many "
                                     "epochs (hivemind's default 1 keeps peers from drifting apart)")


class MLConfig(Section):
    trainer: Literal["builtin", "hivemind"] = Field(
        "builtin", description="builtin: workers push to the parameter server; hivemind: each worker is a "
                               "hivemind.Optimizer peer (the hivemind image; hive/recipe.py maps this section)")
    hivemind: HivemindConfig = HivemindConfig()
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    staleness: StalenessConfig = StalenessConfig()
    aggregation: AggregationConfig = AggregationConfig()
    compression: CompressionConfig = CompressionConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    local: LocalStepsConfig = LocalStepsConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    attack: AttackConfig = AttackConfig()
    budget: BudgetConfig = BudgetConfig()
    max_message_mb: int = Field(64, ge=1, description="PS refuses frames larger than this")
    max_update_norm: float | None = Field(
        None, gt=0, description="largest L2 norm of an update (gradient, or H > 1 delta): the PS refuses a larger "
                                "one and a worker whose own update is larger reports its training diverged; null = "
                                "10 * sqrt(d) for a model of d parameters (RMS 10 per coordinate, at least 80x the "
                                "largest honest update measured: ml/divergence.py)")
    data_plane_auth: Literal["curve", "plain"] = Field(
        "curve", description="who may talk to the PS (dataplane.py): curve = each worker's own keypair, every byte "
                             "encrypted; plain = each worker's own password, not encrypted (trusted networks only: "
                             "it saves CURVE's cost, make bench-ps)")
    reply_timeout_s: float = Field(120.0, gt=0, description="worker: a PS silent this long after a request is presumed "
                                   "gone (socket rebuilt, HELLO again); sync mode adds staleness.sync_timeout_s")

    @model_validator(mode="after")
    def _consistent(self) -> "MLConfig":
        if self.staleness.min_bound > self.staleness.max_bound:
            raise ValueError("staleness.min_bound is above staleness.max_bound")
        if self.model.arch == "transformer" and self.model.hidden_dim % self.model.heads:
            raise ValueError("model.hidden_dim must be a multiple of model.heads")
        if self.compression.policy == "adaptive" and self.trainer == "hivemind":
            raise ValueError("compression.policy adaptive: hivemind's averagers use one codec for every peer "
                             "(use policy fixed)")
        if self.attack.kind != "none" and not self.attack.workers:
            raise ValueError("attack.workers must name at least one worker when attack.kind is set")
        if self.trainer == "hivemind":
            from ..hive.recipe import refusals  # the mapping imports this module's types

            refused = refusals(self)
            if refused:
                raise ValueError("trainer hivemind: " + "; ".join(refused))
        return self
