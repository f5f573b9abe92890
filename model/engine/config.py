"""Typed training configuration: the paper's recipe (SAS-VPReID section 4.2) and a tiny CPU recipe.

``TrainConfig.recipe(name)`` gives the defaults for a model config name:

- ``vit-l-14`` / ``vit-b-16``: the paper's recipe. Adam; lr 3.5e-4 for new modules and 5e-6 for
  the pretrained CLIP tower; linear warm-up over 10 iterations from 3.5e-5; x0.1 at epochs 10, 20
  and 30; 40 epochs; batch P=4 identities x K=4 tracklets x T=8 frames (restricted-random
  sampling). Weight decay is not given by the paper: we use 1e-4 as coupled L2 in Adam (the value
  of the CLIP-ReID family of code bases SAS-VPReID builds on), on every trainable parameter.
- ``tiny``: a recipe that learns on SynthXFD on 2 CPU cores in a few minutes (see
  ``bench/RESULTS.md``). The tiny backbone is never pretrained.

Backbone learning rate rule: the small pretrained-part rate only makes sense for pretrained
weights. When no ``--clip-weights`` file is given, the CLIP tower is randomly initialised and its
parameter group gets the new-module rate ``lr_new`` (see :func:`backbone_lr`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import model.config as model_config
from model.config import ModelConfig

Layout = Literal["auto", "detreidx", "mars", "plain"]
MemoryInit = Literal["online", "centroids"]

# Fields that may change between a run and its --resume without changing what is computed.
RESUME_MUTABLE: frozenset[str] = frozenset(
    {"epochs", "eval_every", "ckpt_every", "device", "num_workers", "log_every", "eval_batch_size",
     "progress", "keep_states", "frame_cache_mb"}
)


@dataclass
class TrainConfig:
    """Everything that defines a training run (serialised to ``RUN_DIR/train_config.json``)."""

    model: str = "vit-l-14"  # model preset (``ModelConfig.preset``)
    layout: Layout = "auto"
    # -- schedule (paper 4.2) --
    epochs: int = 40
    lr_new: float = 3.5e-4
    lr_pretrained: float = 5e-6
    warmup_iters: int = 10
    warmup_start_lr: float = 3.5e-5  # warm-up starts at this lr for the new modules (factor 0.1)
    schedule: Literal["step", "cosine"] = "step"  # step: x gamma at the milestones (paper); cosine: to 0
    milestones: tuple[int, ...] = (10, 20, 30)  # epochs (0-based) from which the lr is x gamma
    gamma: float = 0.1
    weight_decay: float = 1e-4  # paper silent; CLIP-ReID-family value, coupled L2 (Adam)
    # Adam (paper); "sgd" = SGD with momentum 0.9 (the BoT / fast-reid alternative; its update is
    # proportional to the gradient, which the distributed-equivalence test relies on).
    optimizer: Literal["adam", "sgd"] = "adam"
    grad_clip: float | None = None  # max global grad norm; None = no clipping (paper)
    # Decay of an exponential moving average of the weights, served as final/ (the last iterate
    # stays in checkpoints/); None = off (paper). model.engine.weight_average.
    weight_average: float | None = None
    # What a training class is: "person" (every tracklet of a person, across sessions and outfits:
    # the papers' long-term, clothing-changed re-identification) or "outfit" (each person in each
    # session, i.e. in one set of clothes: short-term re-identification; tracklets without a
    # session stay one class per person). model.engine.datasets.outfit_classes.
    train_identity: Literal["person", "outfit"] = "person"
    # -- batch (paper 4.2) --
    p: int = 4  # identities per batch
    k: int = 4  # tracklets per identity
    seq_len: int = 8  # frames per tracklet, restricted-random sampling
    # -- augmentation (paper 3.2 / 4.2), drawn once per tracklet --
    flip_p: float = 0.5
    erase_p: float = 0.5
    hue_p: float = 0.5  # p_c
    hue_max: float = 0.3  # h
    crop_pad: int = 0  # random translation by up to this many pixels (pad + random crop); 0 = off
    jitter_p: float = 0.0  # brightness / contrast / saturation jitter (factors in [1 - jitter, 1 + jitter])
    jitter: float = 0.0
    gray_p: float = 0.0  # greyscale
    # -- model options (ablations and paper-2 options) --
    mgtm: bool = True
    prsd: bool = True
    memory: bool = True
    memory_init: MemoryInit = "online"  # "centroids": proxies = class centroids at each epoch start
    memory_momentum: float | None = None  # None: the model config's (paper mu = 0.2)
    memory_temperature: float | None = None  # None: the model config's (paper tau = 1.0)
    memory_input: Literal["bnneck", "raw"] | None = None  # None: the model config's
    branch_grad: Literal["detach", "scale", "full"] | None = None  # None: the model config's
    branch_grad_scale: float | None = None
    descriptor_weights: tuple[float, float, float] | None = None  # (v_i, h_M, f_S); None: model's
    input_norm: Literal["dataset", "frame"] | None = None  # None: the model config's
    trainable_blocks: int | Literal["all"] = "all"
    temporal_pool: Literal["mean", "attention"] = "mean"
    side_info: Literal["none", "camera", "platform", "both"] = "none"
    grad_checkpointing: bool = False
    sync_bn: bool = False  # SyncBatchNorm across the ranks of a distributed CUDA run
    scan_chunk: int | None = None  # pure-PyTorch Mamba scan chunk (speed only); None = model's
    # -- machinery --
    seed: int = 0
    device: str = "cpu"
    bf16: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    compile: bool = False  # torch.compile the forward pass
    num_workers: int = 2
    # Decoded training frames kept in memory (MiB; 0 = off). Only the main process keeps them, so
    # it pays off with num_workers = 0: a small data set is then read from disk once per run.
    frame_cache_mb: int = 0
    eval_every: int = 0  # evaluate on the test cases every N epochs (0: only at the end)
    ckpt_every: int = 5  # write RUN_DIR/checkpoints/epoch_XXX every N epochs (and at the end)
    keep_states: int = 1  # keep the optimizer/RNG training state in only the newest N checkpoints
    log_every: int = 10  # iterations between step records in log.jsonl
    eval_frames: int | None = None  # frames per tracklet at test (even sampling); None = model's
    eval_batch_size: int = 32
    progress: bool = True

    # -- presets ---------------------------------------------------------------------------
    @staticmethod
    def recipe(name: str, **overrides: Any) -> TrainConfig:
        """Default recipe for model preset ``name`` with optional field overrides."""
        if name not in model_config.PRESETS:
            raise ValueError(f"unknown model config {name!r}; choose one of {sorted(model_config.PRESETS)}")
        base = _CPU_RECIPES.get(name, {})
        cfg = TrainConfig(model=name, **base)
        return cfg.replace(**overrides) if overrides else cfg

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied; unknown fields are an error naming them."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise ValueError(f"unknown training config field(s): {sorted(unknown)}")
        cfg = dataclasses.replace(self, **changes)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise ``ValueError`` on the first setting that cannot work."""
        checks = [
            (self.epochs >= 0, f"epochs must be >= 0, got {self.epochs}"),
            (self.p >= 2, f"P (identities per batch) must be >= 2 for the triplet loss, got {self.p}"),
            (self.k >= 2, f"K (tracklets per identity) must be >= 2 for the triplet loss, got {self.k}"),
            (self.seq_len >= 1, f"seq_len must be >= 1, got {self.seq_len}"),
            (self.lr_new > 0 and self.lr_pretrained >= 0, "learning rates must be positive"),
            (self.warmup_iters >= 0, f"warmup_iters must be >= 0, got {self.warmup_iters}"),
            (0 < self.warmup_start_lr, f"warmup_start_lr must be > 0, got {self.warmup_start_lr}"),
            (list(self.milestones) == sorted(self.milestones), f"milestones must increase, got {self.milestones}"),
            (self.ckpt_every >= 1, f"ckpt_every must be >= 1, got {self.ckpt_every}"),
            (self.eval_every >= 0, f"eval_every must be >= 0, got {self.eval_every}"),
            (self.keep_states >= 1, f"keep_states must be >= 1, got {self.keep_states}"),
            (self.log_every >= 1, f"log_every must be >= 1, got {self.log_every}"),
            (self.num_workers >= 0, f"num_workers must be >= 0, got {self.num_workers}"),
            (self.frame_cache_mb >= 0, f"frame_cache_mb must be >= 0, got {self.frame_cache_mb}"),
            (0 <= self.jitter_p <= 1 and 0 <= self.gray_p <= 1, "jitter_p and gray_p must be in [0, 1]"),
            (0 <= self.jitter < 1, f"jitter must be in [0, 1), got {self.jitter}"),
            (self.weight_average is None or 0 < self.weight_average < 1,
             f"weight_average (decay) must be in (0, 1), got {self.weight_average}"),
            (self.optimizer in ("adam", "sgd"), f"optimizer must be adam|sgd, got {self.optimizer!r}"),
            (self.schedule in ("step", "cosine"), f"schedule must be step|cosine, got {self.schedule!r}"),
            (self.memory_init in ("online", "centroids"), f"memory_init must be online|centroids, got {self.memory_init!r}"),
            (self.train_identity in ("person", "outfit"),
             f"train_identity must be person|outfit, got {self.train_identity!r}"),
            (self.descriptor_weights is None or (len(self.descriptor_weights) == 3 and min(self.descriptor_weights) >= 0
                                                 and max(self.descriptor_weights) > 0),
             f"descriptor_weights must be three weights >= 0 (v_i, h_M, f_S), not all 0, got {self.descriptor_weights}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    # -- the model it trains ---------------------------------------------------------------
    def model_config(self, num_classes: int) -> ModelConfig:
        """The ``ModelConfig`` of preset ``model`` with this run's ablations and options applied."""
        cfg = ModelConfig.preset(self.model, num_classes=num_classes)
        mevb = dataclasses.replace(
            cfg.mevb,
            memory=self.memory,
            temporal_pool=self.temporal_pool,
            momentum=_given(self.memory_momentum, cfg.mevb.momentum),
            temperature=_given(self.memory_temperature, cfg.mevb.temperature),
            memory_input=_given(self.memory_input, cfg.mevb.memory_input),
        )
        mgtm = dataclasses.replace(
            cfg.mgtm,
            enabled=self.mgtm,
            train_frames=self.seq_len,
            scan_chunk=cfg.mgtm.scan_chunk if self.scan_chunk is None else self.scan_chunk,
        )
        backbone = dataclasses.replace(
            cfg.backbone,
            trainable_blocks=self.trainable_blocks,
            side_info=self.side_info,
            grad_checkpointing=self.grad_checkpointing,
        )
        prsd = dataclasses.replace(cfg.prsd, enabled=self.prsd)
        descriptor = cfg.descriptor
        if self.descriptor_weights is not None:
            v, h, s = self.descriptor_weights
            descriptor = dataclasses.replace(descriptor, v_weight=v, h_weight=h, s_weight=s)
        return dataclasses.replace(cfg, mevb=mevb, mgtm=mgtm, backbone=backbone, prsd=prsd, descriptor=descriptor,
                                   eval_frames=_given(self.eval_frames, cfg.eval_frames),
                                   input_norm=_given(self.input_norm, cfg.input_norm),
                                   branch_grad=_given(self.branch_grad, cfg.branch_grad),
                                   branch_grad_scale=_given(self.branch_grad_scale, cfg.branch_grad_scale))

    # -- serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown training config field(s): {sorted(unknown)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        cfg = TrainConfig(**values)
        cfg.validate()
        return cfg

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @staticmethod
    def load(path: Path) -> TrainConfig:
        try:
            return TrainConfig.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: unreadable training config ({exc})") from exc


def _given(value: Any, default: Any) -> Any:
    """A run's explicit setting, or the model config's own when the run leaves it unset (None)."""
    return default if value is None else value


def backbone_lr(cfg: TrainConfig, pretrained: bool) -> float:
    """Learning rate of the CLIP tower: ``lr_pretrained`` for pretrained weights, else ``lr_new``."""
    return cfg.lr_pretrained if pretrained else cfg.lr_new


def resume_conflicts(saved: TrainConfig, requested: dict[str, Any]) -> list[str]:
    """Explicitly requested fields that would change a resumed run's computation (under a cosine
    schedule the number of epochs sets the decay, so it may not change either)."""
    mutable = RESUME_MUTABLE - ({"epochs"} if saved.schedule == "cosine" else set())
    return [
        f"{name}: run has {getattr(saved, name)!r}, requested {value!r}"
        for name, value in sorted(requested.items())
        if name not in mutable and getattr(saved, name) != value
    ]


# The tiny recipe (2 CPU cores, default SynthXFD build, <= 10 min including the final evaluation).
# The backbone is random, so every group trains at 1e-3 (a from-scratch rate; 3.5e-4 moves a random
# tiny ViT too little in the iterations that fit). Batches of 8 identities x 2 tracklets (same 16
# tracklets as the paper's 4 x 4): a from-scratch model learns identities much faster when each
# step sees more of them (bench/RESULTS.md). 11 epochs of 175 iterations at ~44 s each on an idle
# 2-core machine, x0.1 for the last three.
_TINY_RECIPE: dict[str, Any] = {
    "epochs": 11,
    "p": 8,
    "k": 2,
    "lr_new": 1e-3,
    "lr_pretrained": 1e-3,
    "warmup_start_lr": 1e-4,
    "milestones": (8,),
    "ckpt_every": 2,
    "log_every": 10,
}


# The small recipe: the CPU recipe for real images (PETA-dev, 2 CPU cores, <= 30 min; see
# bench/RESULTS.md "Accuracy on real images (PETA-dev)"). From scratch every group trains at
# 1e-3 with a cosine decay after 150 warm-up iterations; P=16 x K=4 tracklets of T=4 frames
# (repeats of a short tracklet's frames cost nothing: the backbone sees each frame once);
# translation by up to 6 px, flips and erasing, but no hue jitter: on real cameras clothing
# colour is the strongest cue there is, and the same clothes are seen in every test case.
_SMALL_RECIPE: dict[str, Any] = {
    "epochs": 15,
    "p": 16,
    "k": 4,
    "seq_len": 4,
    "lr_new": 1e-3,
    "lr_pretrained": 1e-3,
    "warmup_iters": 150,
    "warmup_start_lr": 1e-4,
    "schedule": "cosine",
    "weight_decay": 5e-4,
    "hue_p": 0.0,
    "crop_pad": 6,
    "ckpt_every": 5,
    "log_every": 10,
    "eval_batch_size": 64,
    # ~10k frames of 128x64 are 240 MB decoded: read once, then no loader processes at all.
    "num_workers": 0,
    "frame_cache_mb": 1024,
}

_CPU_RECIPES: dict[str, dict[str, Any]] = {"tiny": _TINY_RECIPE, "small": _SMALL_RECIPE}
