"""BiCSNet-lite0..3: the on-device detectors of Section V-E (Table VII).

Same block graph as BiCSNet (the topology tables of :mod:`bicsnet.arch.specs`,
read, not copied); what changes is what sits on the graph:

* every basic block T is an MBConv block (inverted bottleneck: 1x1 expand x6,
  3x3 depthwise, optional squeeze-excitation, 1x1 project, identity shortcut),
  with level widths {16, 24, 40, 80, 112, 112, 112} for L1..L7 (SpineNet-Mobile
  / EfficientNet-B0 widths, the paper's [63]) times the width multiplier;
* the stem is a 3x3 stride-2 conv to L1 (kernels larger than 3x3 become 3x3)
  and the stem blocks are MBConvs, the first one strided to L2 in place of the
  max-pool;
* the Spatial Fusion Module loses its 1x1 squeeze (``squeeze=False``),
  down-sampling is space-to-depth followed by a stride-2 conv (a 2x2
  pixel-unshuffle and a 1x1 conv, ``down="space_to_depth"``), and the inputs of
  a block are fused by EfficientDet's fast normalised fusion;
* the box and class subnets use depthwise-separable convolutions with a norm
  per pyramid level, EfficientDet-style (:class:`SeparableRetinaNetHead`).

:class:`BiCSNetLite` keeps :class:`bicsnet.arch.backbone.BiCSNet`'s contract: it
returns an ordered dict ``p3..p7`` and has ``out_channels``, ``out_features``,
``strides``, ``size_divisibility`` (128), ``output_shape()`` and a ``config``
with ``to_dict()``. ``docs/architecture.md`` ("BiCSNet-lite") records the
choices and the figures that led to them.
"""
from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.retinanet import RetinaNetHead, RetinaNetRegressionHead

from ..arch.backbone import ShapeSpec, _level_size
from ..errors import ConfigError
from ..arch.fusion import ResampleBranch, SpatialFusionModule
from ..arch.layers import ACTIVATIONS, NORM_LAYERS, ConvNormAct, DropPath, make_act, make_norm
from .detection import FocalLossClassificationHead, retinanet_anchor_generator
from ..arch.specs import PATHWAYS, STEM_SOURCE, TOPOLOGIES, BlockSpec

__all__ = [
    "LITE_LEVEL_FILTERS",
    "LiteScaling",
    "LITE_SCALING",
    "BiCSNetLiteConfig",
    "BiCSNetLite",
    "MBConv",
    "SqueezeExcite",
    "SeparableConv",
    "SeparableRetinaNetHead",
    "build_lite_head",
    "lite_model_entries",
]

#: Feature dimension per level L1..L7 before the width multiplier (Section V-E,
#: following [63]: SpineNet-Mobile's FILTER_SIZE_MAP, EfficientNet-B0's widths).
LITE_LEVEL_FILTERS = {1: 16, 2: 24, 3: 40, 4: 80, 5: 112, 6: 112, 7: 112}


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a width to a multiple of ``divisor``, never below 90% of it (EfficientNet/MobileNet)."""
    if divisor <= 1:
        return max(1, int(value))
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


# ---------------------------------------------------------------------------- blocks


class SqueezeExcite(nn.Module):
    """EfficientNet's squeeze-excitation: mean -> 1x1 reduce -> act -> 1x1 expand -> sigmoid gate."""

    def __init__(self, channels: int, squeeze: int, act: str = "swish") -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeeze, 1)
        self.act = make_act(act)
        self.expand = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        s = self.expand(self.act(self.reduce(x.mean(dim=(2, 3), keepdim=True))))
        return x * torch.sigmoid(s)


class MBConv(nn.Module):
    """Inverted bottleneck (MobileNetV2 / EfficientNet MBConv).

    1x1 expand to ``expand_ratio x in`` + norm + act, ``kernel_size`` depthwise
    (stride ``stride``) + norm + act, optional squeeze-excitation (squeeze width
    ``se_ratio x in``, EfficientNet's), 1x1 project + norm, no activation. The
    shortcut is the identity when shape allows (stride 1, in == out), with
    stochastic depth on the branch; its last norm then starts at zero.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        stride: int = 1,
        expand_ratio: int = 6,
        kernel_size: int = 3,
        se_ratio: float = 0.0,
        norm: str = "bn",
        act: str = "swish",
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        mid = in_ch * expand_ratio
        self.expand: nn.Module = ConvNormAct(in_ch, mid, 1, norm=norm, act=act) if expand_ratio != 1 else nn.Identity()
        self.depthwise = ConvNormAct(mid, mid, kernel_size, stride=stride, norm=norm, act=act, groups=mid)
        self.se: nn.Module = SqueezeExcite(mid, max(1, int(in_ch * se_ratio)), act) if se_ratio > 0 else nn.Identity()
        self.project = ConvNormAct(mid, out_ch, 1, norm=norm, act=None)
        self.use_residual = stride == 1 and in_ch == out_ch
        self.drop_path = DropPath(drop_path) if self.use_residual else nn.Identity()
        if self.use_residual:
            bn = self.project[1]
            if getattr(bn, "weight", None) is not None:
                nn.init.zeros_(bn.weight)
        self.in_channels, self.out_channels, self.stride = in_ch, out_ch, stride

    def forward(self, x: Tensor) -> Tensor:
        y = self.project(self.se(self.depthwise(self.expand(x))))
        return x + self.drop_path(y) if self.use_residual else y


class MBConvGroup(nn.Sequential):
    """``repeats`` MBConv blocks at one level (the first may stride / change width)."""

    def __init__(self, in_ch: int, out_ch: int, repeats: int, stride: int = 1, drop_path: float = 0.0, **kw: Any) -> None:
        blocks = [
            MBConv(in_ch if i == 0 else out_ch, out_ch, stride if i == 0 else 1, drop_path=drop_path, **kw)
            for i in range(repeats)
        ]
        super().__init__(*blocks)
        self.in_channels, self.out_channels = in_ch, out_ch


# ---------------------------------------------------------------------------- backbone


@dataclass
class BiCSNetLiteConfig:
    """Every knob of a lite backbone, as plain data (round-trips through dicts).

    ``width_mult`` scales :data:`LITE_LEVEL_FILTERS` (rounded to multiples of
    ``channel_divisor``); ``endpoint_channels`` is the P3-P7 width the subnets
    read. The pathway switches and ``topology`` work as in
    :class:`bicsnet.arch.backbone.BiCSNetConfig`.
    """

    topology: str = "bicsnet"
    width_mult: float = 1.0
    endpoint_channels: int = 64
    depth_repeat: int = 1
    expand_ratio: int = 6
    kernel_size: int = 3
    se_ratio: float = 0.25
    global_context: bool = True
    fusion: str = "fast_normalized"
    down: str = "space_to_depth"
    activation: str = "swish"
    norm: str = "bn"
    drop_path_rate: float = 0.0
    channel_divisor: int = 8
    gap_connection: bool = True
    skip_connection: bool = True
    long_range_gap_connection: bool = True
    min_level: int = 3
    max_level: int = 7
    level_filters: dict[int, int] = field(default_factory=lambda: dict(LITE_LEVEL_FILTERS))

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (JSON-safe: level keys become strings)."""
        d = dataclasses.asdict(self)
        d["level_filters"] = {str(k): v for k, v in self.level_filters.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BiCSNetLiteConfig":
        """Inverse of :meth:`to_dict`; unknown keys are an error naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown lite backbone option(s): {', '.join(unknown)}")
        d = dict(d)
        if "level_filters" in d:
            d["level_filters"] = {int(k): int(v) for k, v in d["level_filters"].items()}
        return cls(**d)

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad option."""
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
        if self.fusion not in ("sum", "fast_normalized"):
            raise ConfigError(f"fusion {self.fusion!r} is not one of sum, fast_normalized")
        if self.down not in ("conv", "space_to_depth"):
            raise ConfigError(f"down {self.down!r} is not one of conv, space_to_depth")
        if self.width_mult <= 0:
            raise ConfigError(f"width_mult must be > 0, got {self.width_mult}")
        if self.depth_repeat < 1 or self.expand_ratio < 1:
            raise ConfigError("depth_repeat and expand_ratio must be >= 1")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ConfigError(f"kernel_size must be odd, got {self.kernel_size}")
        if not 0 <= self.se_ratio <= 1:
            raise ConfigError(f"se_ratio must be in [0, 1], got {self.se_ratio}")
        if not 0 <= self.drop_path_rate < 1:
            raise ConfigError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        if self.endpoint_channels < 1:
            raise ConfigError(f"endpoint_channels must be >= 1, got {self.endpoint_channels}")
        missing = sorted(set(range(1, self.max_level + 1)) - set(self.level_filters))
        if missing:
            raise ConfigError(f"level_filters lacks level(s) {missing}")

    def enabled_pathways(self) -> set[str]:
        """Edge kinds kept by the ablation switches (``main`` always)."""
        on = {"main"}
        for kind, flag in zip(PATHWAYS, (self.gap_connection, self.skip_connection, self.long_range_gap_connection)):
            if flag:
                on.add(kind)
        return on

    def specs(self) -> tuple[BlockSpec, ...]:
        """The topology's table with every basic block replaced by ``mbconv``."""
        keep = self.enabled_pathways()
        return tuple(
            dataclasses.replace(s, block="mbconv", inputs=tuple(e for e in s.inputs if e.kind in keep))
            for s in TOPOLOGIES[self.topology]
        )

    @property
    def stem_label(self) -> str:
        """How ``bicsnet draw`` labels the stem (BiCSNet's is a 7x7 conv)."""
        return "3x3/2 conv"

    def filters(self) -> dict[int, int]:
        """Width of every level after the width multiplier."""
        return {lvl: make_divisible(f * self.width_mult, self.channel_divisor) for lvl, f in self.level_filters.items()}


class BiCSNetLite(nn.Module):
    """BiCSNet-lite backbone (Section V-E) producing P3..P7."""

    def __init__(self, config: BiCSNetLiteConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        if config is None:
            config = BiCSNetLiteConfig(**kwargs)
        elif kwargs:
            config = dataclasses.replace(config, **kwargs)
        config.validate()
        self.config = cfg = config
        norm, act = cfg.norm, cfg.activation
        filters = cfg.filters()
        mb = {"expand_ratio": cfg.expand_ratio, "kernel_size": cfg.kernel_size, "se_ratio": cfg.se_ratio, "norm": norm, "act": act}

        # Stem: 3x3 stride-2 conv to L1 (ResNet's 7x7 becomes 3x3).
        self.stem = ConvNormAct(3, filters[1], 3, stride=2, norm=norm, act=act)
        # name -> (channels, level) of every feature produced so far.
        feats: dict[str, tuple[int, int]] = {STEM_SOURCE: (filters[1], 1)}

        self.specs = cfg.specs()
        non_stem = [s for s in self.specs if s.part != "stem"]
        self.fusions = nn.ModuleDict()
        self.blocks = nn.ModuleDict()
        for spec in self.specs:
            f = filters[spec.level]
            if spec.part == "stem":
                (src,) = spec.inputs
                in_ch, in_level = feats[src.source]
                # The first stem block strides from L1 to L2 in place of the max-pool.
                stride = 2 ** (spec.level - in_level)
                if stride not in (1, 2):
                    raise ConfigError(f"stem block {spec.name} cannot go from level {in_level} to {spec.level}")
                self.blocks[spec.name] = MBConvGroup(in_ch, f, cfg.depth_repeat, stride, **mb)
            else:
                branches = [
                    ResampleBranch(
                        feats[e.source][0], feats[e.source][0], feats[e.source][1], f, spec.level, 1.0, norm, act,
                        spatial_fusion=True, global_context=cfg.global_context, squeeze=False, down=cfg.down,
                    )
                    for e in spec.inputs
                ]
                self.fusions[spec.name] = SpatialFusionModule(branches, act, fusion=cfg.fusion)
                rate = cfg.drop_path_rate * (non_stem.index(spec) + 1) / len(non_stem)
                self.blocks[spec.name] = MBConvGroup(f, f, cfg.depth_repeat, 1, rate, **mb)
            feats[spec.name] = (f, spec.level)

        self.levels = list(range(cfg.min_level, cfg.max_level + 1))
        outputs = {s.level: s.name for s in self.specs if s.output}
        missing = [lvl for lvl in self.levels if lvl not in outputs]
        if missing:
            raise ConfigError(f"topology {cfg.topology!r} has no output block for level(s) {missing}")
        self.output_blocks = {f"p{lvl}": outputs[lvl] for lvl in self.levels}
        c = cfg.endpoint_channels
        self.endpoints = nn.ModuleDict(
            {p: ConvNormAct(feats[b][0], c, 1, norm=norm, act=act) for p, b in self.output_blocks.items()}
        )
        self.out_channels = c
        self.strides = {f"p{lvl}": 2**lvl for lvl in self.levels}
        self.size_divisibility = 2**cfg.max_level

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

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        h, w = x.shape[-2:]
        feats: dict[str, Tensor] = {STEM_SOURCE: self.stem(x)}
        for spec in self.specs:
            if spec.part == "stem":
                feats[spec.name] = self.blocks[spec.name](feats[spec.inputs[0].source])
            else:
                size = _level_size(h, w, spec.level)
                fused = self.fusions[spec.name]([feats[e.source] for e in spec.inputs], size)
                feats[spec.name] = self.blocks[spec.name](fused)
        return OrderedDict((p, self.endpoints[p](feats[b])) for p, b in self.output_blocks.items())


# ---------------------------------------------------------------------------- detection head


def _head_norm(kind: str, channels: int) -> nn.Module:
    if kind == "none":
        return nn.Identity()
    if kind == "bn":
        return make_norm("bn", channels)
    if kind == "gn":
        return make_norm("gn", channels)
    raise ConfigError(f"head_norm {kind!r} is not one of bn, gn, none")


class SeparableConv(nn.Sequential):
    """Depthwise 3x3 + pointwise 1x1 (EfficientDet's SeparableConv2d)."""

    def __init__(self, in_ch: int, out_ch: int, bias: bool = False) -> None:
        super().__init__(
            nn.Conv2d(in_ch, in_ch, 3, padding=1, groups=in_ch, bias=False),
            nn.Conv2d(in_ch, out_ch, 1, bias=bias),
        )


class _SeparableSubnet(nn.Module):
    """``num_layers`` x (separable conv, norm, act) shared across levels, then a separable predictor.

    As EfficientDet's box/class nets: the convolutions are shared by every
    level, each level has its own norm layers (statistics differ per level).
    """

    def __init__(
        self, in_ch: int, channels: int, num_layers: int, out_ch: int, num_levels: int, norm: str, act: str, prior_bias: float
    ) -> None:
        super().__init__()
        self.convs = nn.ModuleList([SeparableConv(in_ch if i == 0 else channels, channels) for i in range(num_layers)])
        self.norms = nn.ModuleList(
            [nn.ModuleList([_head_norm(norm, channels) for _ in range(num_layers)]) for _ in range(num_levels)]
        )
        self.act = make_act(act)
        self.predictor = SeparableConv(channels if num_layers else in_ch, out_ch, bias=True)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.constant_(self.predictor[1].bias, prior_bias)

    def forward(self, x: Tensor, level: int) -> Tensor:
        norms = self.norms[level]
        for conv, norm in zip(self.convs, norms):
            x = self.act(norm(conv(x)))
        return self.predictor(x)


def _flatten(out: Tensor, per_anchor: int) -> Tensor:
    # (N, A * K, H, W) -> (N, HWA, K), torchvision's layout.
    n, _, h, w = out.shape
    return out.view(n, -1, per_anchor, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, per_anchor)


class SeparableClassificationHead(FocalLossClassificationHead):
    """Class subnet with separable convs; focal loss (settable alpha/gamma) and 1..K labels as the base."""

    def __init__(
        self,
        in_channels: int,
        num_anchors: int,
        num_classes: int,
        channels: int = 64,
        num_layers: int = 3,
        num_levels: int = 5,
        focal_alpha: float = 0.25,
        focal_gamma: float = 1.5,
        norm: str = "bn",
        act: str = "swish",
        prior_probability: float = 0.01,
    ) -> None:
        nn.Module.__init__(self)  # the base's 256-wide 3x3 convs are not built
        bias = -math.log((1 - prior_probability) / prior_probability)
        self.subnet = _SeparableSubnet(in_channels, channels, num_layers, num_anchors * num_classes, num_levels, norm, act, bias)
        self.num_classes = num_classes
        self.num_anchors = num_anchors
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.BETWEEN_THRESHOLDS = det_utils.Matcher.BETWEEN_THRESHOLDS

    def forward(self, x: list[Tensor]) -> Tensor:
        return torch.cat([_flatten(self.subnet(f, i), self.num_classes) for i, f in enumerate(x)], dim=1)


class SeparableRegressionHead(RetinaNetRegressionHead):
    """Box subnet with separable convs; torchvision's L1 box loss and coder."""

    def __init__(
        self,
        in_channels: int,
        num_anchors: int,
        channels: int = 64,
        num_layers: int = 3,
        num_levels: int = 5,
        norm: str = "bn",
        act: str = "swish",
    ) -> None:
        nn.Module.__init__(self)
        self.subnet = _SeparableSubnet(in_channels, channels, num_layers, num_anchors * 4, num_levels, norm, act, 0.0)
        self.box_coder = det_utils.BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
        self._loss_type = "l1"

    def forward(self, x: list[Tensor]) -> Tensor:
        return torch.cat([_flatten(self.subnet(f, i), 4) for i, f in enumerate(x)], dim=1)


class SeparableRetinaNetHead(RetinaNetHead):
    """EfficientDet-style box and class subnets for :class:`~bicsnet.models.detection.BiCSNetRetinaNet`."""

    def __init__(
        self,
        in_channels: int,
        num_anchors: int,
        num_classes: int,
        channels: int = 64,
        num_layers: int = 3,
        num_levels: int = 5,
        focal_alpha: float = 0.25,
        focal_gamma: float = 1.5,
        norm: str = "bn",
        act: str = "swish",
    ) -> None:
        nn.Module.__init__(self)
        self.classification_head = SeparableClassificationHead(
            in_channels, num_anchors, num_classes, channels, num_layers, num_levels, focal_alpha, focal_gamma, norm, act
        )
        self.regression_head = SeparableRegressionHead(in_channels, num_anchors, channels, num_layers, num_levels, norm, act)


def build_lite_head(
    backbone: nn.Module,
    num_classes: int,
    *,
    channels: int,
    num_layers: int,
    anchor_scale: float = 3.0,
    focal_alpha: float = 0.25,
    focal_gamma: float = 1.5,
    head_norm: str = "bn",
    **_: Any,
) -> SeparableRetinaNetHead:
    """The separable head for ``backbone``; extra detector options are ignored (they are the detector's)."""
    strides = [backbone.strides[p] for p in backbone.out_features]
    num_anchors = retinanet_anchor_generator(strides, anchor_scale).num_anchors_per_location()[0]
    act = getattr(getattr(backbone, "config", None), "activation", "swish")
    return SeparableRetinaNetHead(
        backbone.out_channels, num_anchors, num_classes, channels, num_layers, len(strides), focal_alpha, focal_gamma, head_norm, act
    )


# ---------------------------------------------------------------------------- the family


@dataclass(frozen=True)
class LiteScaling:
    """One lite model: input size, width multiplier, P3-P7 width, subnet width and depth."""

    input_size: int
    width_mult: float
    endpoint_channels: int
    head_channels: int
    head_layers: int


#: Our scaling of the lite family (the paper gives only Table VII's totals);
#: docs/architecture.md ("BiCSNet-lite") has the search that led here.
LITE_SCALING: dict[str, LiteScaling] = {
    "lite0": LiteScaling(256, 0.6, 24, 24, 4),
    "lite1": LiteScaling(384, 0.65, 40, 40, 4),
    "lite2": LiteScaling(384, 1.0, 64, 64, 4),
    "lite3": LiteScaling(512, 1.1, 104, 104, 4),
}

#: Backbone overrides that make a lite model tiny (tests, CPU demos).
LITE_TINY = {"width_mult": 0.25, "endpoint_channels": 16, "expand_ratio": 2}


def _build_backbone(base: BiCSNetLiteConfig, **overrides: Any) -> BiCSNetLite:
    names = {f.name for f in dataclasses.fields(BiCSNetLiteConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ConfigError(f"unknown lite backbone option(s): {', '.join(unknown)}")
    if "level_filters" in overrides:
        overrides["level_filters"] = {int(k): int(v) for k, v in overrides["level_filters"].items()}
    return BiCSNetLite(dataclasses.replace(base, **overrides))


def lite_config(key: str) -> BiCSNetLiteConfig:
    """The backbone config of ``bicsnet_<key>`` (e.g. ``lite0``)."""
    s = LITE_SCALING[key]
    return BiCSNetLiteConfig(width_mult=s.width_mult, endpoint_channels=s.endpoint_channels)


def lite_model_entries() -> list[Any]:
    """Registry entries ``bicsnet_lite0`` .. ``bicsnet_lite3``."""
    from .registry import ModelEntry

    fields = tuple(f.name for f in dataclasses.fields(BiCSNetLiteConfig))
    entries = []
    for key, s in LITE_SCALING.items():
        cfg = lite_config(key)
        head: Callable[..., nn.Module] = partial(build_lite_head, channels=s.head_channels, num_layers=s.head_layers)
        entries.append(
            ModelEntry(
                f"bicsnet_{key}",
                cfg,  # type: ignore[arg-type]  # a lite config, drawn and described like BiCSNet's
                s.input_size,
                3.0,
                f"BiCSNet-{key} (Table VII): MBConv blocks, width x{s.width_mult}, "
                f"{s.endpoint_channels}-d P3-P7, {s.head_layers}x{s.head_channels} separable subnets",
                builder=partial(_build_backbone, cfg),
                extra={
                    "backbone_fields": fields,
                    "detection": {"head_norm": "bn"},
                    "detection_head": head,
                    "tiny": dict(LITE_TINY),
                    "topology_config": cfg,
                },
            )
        )
    return entries
