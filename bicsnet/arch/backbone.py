"""The BiCSNet backbone: stem, block graph from a topology table, endpoints.

Built from :mod:`bicsnet.arch.specs` (what connects to what) and a
:class:`BiCSNetConfig` (how wide, how deep, which switches). The forward pass
returns an ordered dict ``p3..p7`` (strides 8..128), finest first, like
torchvision's detection backbones; ``out_channels`` and ``output_shape()``
declare channels and strides (detectron2's contract), ``size_divisibility``
the padding a detector should apply (2^7).
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from torchvision.ops import FeaturePyramidNetwork

from .blocks import BlockGroup, block_out_channels
from ..errors import ConfigError
from .fusion import ResampleBranch, SpatialFusionModule
from .layers import ACTIVATIONS, NORM_LAYERS, ConvNormAct
from .specs import LEVEL_FILTERS, PATHWAYS, STEM_SOURCE, TOPOLOGIES, BlockSpec

__all__ = ["BiCSNetConfig", "BiCSNet", "ShapeSpec"]


@dataclass
class BiCSNetConfig:
    """Every knob of the backbone, as plain data (round-trips through dicts).

    Scaling (Table I): ``depth_repeat`` d, ``sfm_ratio`` gamma, ``width_mult``
    omega. Ablations (Tables IX, X): ``topology="csnet"``, the three pathway
    switches, ``spatial_fusion=False`` and ``fpn=True``. ``grad_checkpointing``
    trades compute for training memory (see :meth:`BiCSNet.set_grad_checkpointing`).
    """

    topology: str = "bicsnet"
    depth_repeat: int = 1
    sfm_ratio: float = 0.6
    width_mult: float = 1.0
    endpoint_channels: int = 256
    stem_channels: int = 64
    activation: str = "relu"
    norm: str = "bn"
    drop_path_rate: float = 0.0
    gap_connection: bool = True
    skip_connection: bool = True
    long_range_gap_connection: bool = True
    spatial_fusion: bool = True
    fpn: bool = False
    min_level: int = 3
    max_level: int = 7
    level_filters: dict[int, int] = field(default_factory=lambda: dict(LEVEL_FILTERS))
    grad_checkpointing: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (JSON-safe: level keys become strings)."""
        d = dataclasses.asdict(self)
        d["level_filters"] = {str(k): v for k, v in self.level_filters.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BiCSNetConfig":
        """Inverse of :meth:`to_dict`; unknown keys are an error naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown backbone option(s): {', '.join(unknown)}")
        d = dict(d)
        if "level_filters" in d:
            d["level_filters"] = {int(k): int(v) for k, v in d["level_filters"].items()}
        return cls(**d)

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad option."""
        # Wrong types (e.g. ``--set width_mult=abc``) would fail deep inside the builder.
        kinds = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}
        for f in dataclasses.fields(self):
            value, want = getattr(self, f.name), kinds.get(str(f.type))
            if want and (not isinstance(value, want) or (isinstance(value, bool) and bool not in want)):
                raise ConfigError(f"{f.name}={value!r}: expected {f.type}")
        if self.topology not in TOPOLOGIES:
            raise ConfigError(f"topology {self.topology!r} is not one of {', '.join(TOPOLOGIES)}")
        if self.norm not in NORM_LAYERS:
            raise ConfigError(f"norm {self.norm!r} is not one of {', '.join(NORM_LAYERS)}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"activation {self.activation!r} is not one of {', '.join(ACTIVATIONS)}")
        if self.depth_repeat < 1:
            raise ConfigError(f"depth_repeat must be >= 1, got {self.depth_repeat}")
        if not 0 < self.sfm_ratio <= 4:
            raise ConfigError(f"sfm_ratio must be in (0, 4], got {self.sfm_ratio}")
        if self.width_mult <= 0:
            raise ConfigError(f"width_mult must be > 0, got {self.width_mult}")
        if not 0 <= self.drop_path_rate < 1:
            raise ConfigError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")

    def enabled_pathways(self) -> set[str]:
        """Edge kinds kept by the ablation switches (``main`` always)."""
        on = {"main"}
        for kind, flag in zip(PATHWAYS, (self.gap_connection, self.skip_connection, self.long_range_gap_connection)):
            if flag:
                on.add(kind)
        return on

    def specs(self) -> tuple[BlockSpec, ...]:
        """The topology table with the disabled pathways' edges removed."""
        keep = self.enabled_pathways()
        return tuple(
            dataclasses.replace(s, inputs=tuple(e for e in s.inputs if e.kind in keep))
            for s in TOPOLOGIES[self.topology]
        )


@dataclass(frozen=True)
class ShapeSpec:
    """An output's channels and stride (detectron2's ShapeSpec)."""

    channels: int
    stride: int


def _level_size(h: int, w: int, level: int) -> tuple[int, int]:
    # ceil(h / 2^l) in integer arithmetic: exact for any size, and free of
    # float division, so torch.export can keep H and W symbolic.
    s = 2**level
    return ((h + s - 1) // s, (w + s - 1) // s)


class BiCSNet(nn.Module):
    """BiCSNet backbone (Section III) producing P3..P7."""

    def __init__(self, config: BiCSNetConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        if config is None:
            config = BiCSNetConfig(**kwargs)
        elif kwargs:
            config = dataclasses.replace(config, **kwargs)
        config.validate()
        self.config = config
        cfg = config
        norm, act = cfg.norm, cfg.activation
        filters = {lvl: max(1, int(f * cfg.width_mult)) for lvl, f in cfg.level_filters.items()}

        self.stem = ConvNormAct(3, cfg.stem_channels, 7, stride=2, norm=norm, act=act)
        self.stem_pool = nn.MaxPool2d(3, 2, 1)
        # name -> (channels, base filters, level) of every feature produced so far.
        feats: dict[str, tuple[int, int, int]] = {STEM_SOURCE: (cfg.stem_channels, cfg.stem_channels, 1)}

        self.specs = cfg.specs()
        non_stem = [s for s in self.specs if s.part != "stem"]
        self.fusions = nn.ModuleDict()
        self.blocks = nn.ModuleDict()
        for spec in self.specs:
            f = filters[spec.level]
            if spec.part == "stem":
                (src,) = spec.inputs
                in_ch = feats[src.source][0]
                self.blocks[spec.name] = BlockGroup(spec.block, in_ch, f, cfg.depth_repeat, norm, act)
            else:
                target_in = block_out_channels(spec.block, f)
                branches = [
                    ResampleBranch(
                        *feats[e.source], target_in, spec.level, cfg.sfm_ratio, norm, act, cfg.spatial_fusion,
                        mid_channels=self._squeeze_width(e.kind, feats[e.source][2], spec.level, f),
                    )
                    for e in spec.inputs
                ]
                self.fusions[spec.name] = SpatialFusionModule(branches, act)
                # Stochastic depth grows linearly with block index (SpineNet).
                rate = cfg.drop_path_rate * (non_stem.index(spec) + 1) / len(non_stem)
                self.blocks[spec.name] = BlockGroup(spec.block, target_in, f, cfg.depth_repeat, norm, act, rate)
            feats[spec.name] = (self.blocks[spec.name].out_channels, f, spec.level)

        self.levels = list(range(cfg.min_level, cfg.max_level + 1))
        outputs = {s.level: s.name for s in self.specs if s.output}
        missing = [lvl for lvl in self.levels if lvl not in outputs]
        if missing:
            raise ConfigError(f"topology {cfg.topology!r} has no output block for level(s) {missing}")
        self.output_blocks = {f"p{lvl}": outputs[lvl] for lvl in self.levels}
        c = cfg.endpoint_channels
        # SpineNet's endpoints: 1x1 conv + norm + act to a common width.
        self.endpoints = nn.ModuleDict(
            {p: ConvNormAct(feats[b][0], c, 1, norm=norm, act=act) for p, b in self.output_blocks.items()}
        )
        self.fpn = FeaturePyramidNetwork([c] * len(self.levels), c) if cfg.fpn else None
        # Liveness for the forward pass: after block i, drop the features no later
        # block reads (inference keeps only what is still needed, not every block).
        last_use: dict[str, int] = {}
        for i, spec in enumerate(self.specs):
            for e in spec.inputs:
                last_use[e.source] = i
        self._free_after: list[list[str]] = [[] for _ in self.specs]
        for name, i in last_use.items():
            self._free_after[i].append(name)
        self._endpoint_of = {b: p for p, b in self.output_blocks.items()}
        self.out_channels = c
        self.strides = {f"p{lvl}": 2**lvl for lvl in self.levels}
        self.size_divisibility = 2**cfg.max_level

    @property
    def grad_checkpointing(self) -> bool:
        """Whether training recomputes blocks in backward (the config's flag)."""
        return self.config.grad_checkpointing

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each basic block in the backward pass (timm's API).

        With this on, a training step keeps only the block outputs (which
        later fusions and the endpoints read anyway); every block's Spatial
        Fusion Module (squeeze, global context, resampling, projection) and its
        residual / bottleneck layers run again during backward: less memory
        for about one more forward of the backbone. Only applies in training
        mode with gradients enabled; outputs and gradients are unchanged (the
        RNG state is replayed, so stochastic depth draws the same masks).
        BatchNorm running statistics are updated twice per step from the same
        batch (an effective momentum of 1 - (1 - m)^2).
        """
        self.config = dataclasses.replace(self.config, grad_checkpointing=enable)

    def _block(self, spec: BlockSpec, inputs: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """One basic block T: its fusion of ``inputs`` (or the stem's single input), then its layers."""
        if spec.part == "stem":
            (x,) = inputs
            if spec.inputs[0].source == STEM_SOURCE:
                x = self.stem_pool(x)
            return self.blocks[spec.name](x)
        return self.blocks[spec.name](self.fusions[spec.name](inputs, size))

    def _squeeze_width(self, edge_kind: str, src_level: int, level: int, filters: int) -> int | None:
        """SFM squeeze width for one edge; ``None`` means gamma x source filters.

        The main path's down-sampling D (eqs. (1), (3)) carries a block's own
        features one level up, so it is sized by where it goes: gamma x the
        target level's filters. Cross-scale branches squeeze by gamma x the
        source's filters (SpineNet's resampling). docs/architecture.md gives
        the FLOPs of each reading that led to this choice.
        """
        if edge_kind == "main" and src_level < level:
            return max(1, int(filters * self.config.sfm_ratio))
        return None

    @property
    def out_features(self) -> list[str]:
        """Output names, finest first."""
        return list(self.output_blocks)

    def output_shape(self) -> dict[str, ShapeSpec]:
        """Channels and stride of each output (detectron2's Backbone contract)."""
        return {p: ShapeSpec(self.out_channels, s) for p, s in self.strides.items()}

    @property
    def feature_info(self) -> list[dict[str, Any]]:
        """timm-style description of the outputs."""
        return [{"name": p, "num_chs": self.out_channels, "reduction": s} for p, s in self.strides.items()]

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        h, w = x.shape[-2:]
        feats: dict[str, torch.Tensor] = {STEM_SOURCE: self.stem(x)}
        outs: dict[str, torch.Tensor] = {}
        recompute = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        for i, spec in enumerate(self.specs):
            inputs = [feats[e.source] for e in spec.inputs]
            size = _level_size(h, w, spec.level)
            if recompute:
                feats[spec.name] = checkpoint(self._block, spec, inputs, size, use_reentrant=False)
            else:
                feats[spec.name] = self._block(spec, inputs, size)
            p = self._endpoint_of.get(spec.name)
            if p is not None:  # endpoints as soon as their block exists
                outs[p] = self.endpoints[p](feats[spec.name])
            for name in self._free_after[i]:
                del feats[name]
        out = OrderedDict((p, outs[p]) for p in self.output_blocks)
        if self.fpn is not None:
            out = self.fpn(out)
        return out
