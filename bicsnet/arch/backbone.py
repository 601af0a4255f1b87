"""The BiCSNet backbone: stem, block graph from a topology table, endpoints.

Built from :mod:`bicsnet.arch.specs` (what connects to what) and a
:class:`BiCSNetConfig` (how wide, how deep, which blocks, which switches).
One builder makes every model of the paper: BiCSNet-48S..140 (Table I), the
ablations of Tables IX and X and the lite models of Section V-E (MBConv
blocks, a 3x3 stem and a lighter Spatial Fusion Module, as configuration:
:data:`bicsnet.arch.specs.LITE_PRESET`).

The graph: a stem (ResNet-50's 7x7/2 conv + 3x3/2 max-pool, or the lite 3x3/2
conv) and its level-2 blocks; the Down-Sampling Part (eq. (1)) with its
Gap-Connections (eq. (4)); the Up-Sampling Part (eq. (2)) with its
Skip-Connections (eq. (5)); the End Down-Sampling Part (eq. (3)) with its
Long-Range Gap-Connections (eq. (6)). Every non-stem block first fuses its
inputs with a Spatial Fusion Module (Section III-C, :mod:`bicsnet.arch.fusion`),
then runs its block group (:mod:`bicsnet.arch.blocks`).

Shapes: the forward pass takes ``(N, 3, H, W)`` (any ``H, W``) and returns an
ordered dict ``p3..p7`` of ``(N, endpoint_channels, ceil(H / 2^l), ceil(W / 2^l))``
(strides 8..128), finest first, like torchvision's detection backbones;
:class:`PyramidBackbone` declares channels and strides (``out_channels``,
``output_shape()``, detectron2's contract; ``feature_info``, timm's) and
``size_divisibility``, the padding a detector should apply (2^7).

Errors: a bad configuration is a :class:`~bicsnet.errors.ConfigError` from
:meth:`BiCSNetConfig.validate` naming the first bad option, raised before any
layer is built.
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from torchvision.ops import FeaturePyramidNetwork

from ..dataclass_checks import reject_unknown_fields
from ..errors import ConfigError
from ..fused_ops import OneDNNMaxPool2d
from .blocks import block_out_channels, create_block, list_blocks, make_divisible
from .fusion import DOWN_SAMPLINGS, FUSIONS, BranchBase, PlainResampleBranch, ResampleBranch, SpatialFusionModule
from .layers import ACTIVATIONS, NORM_LAYERS, ConvNormAct
from .specs import LEVEL_FILTERS, PATHWAYS, STEM_SOURCE, TOPOLOGIES, BlockSpec

__all__ = ["STEMS", "BiCSNetConfig", "BiCSNet", "PyramidBackbone", "ShapeSpec"]

#: Stems: ``resnet`` = 7x7/2 conv + 3x3/2 max-pool (ResNet-50's, BiCSNet);
#: ``lite`` = 3x3/2 conv to level 1, the first stem block strides to level 2.
STEMS = ("resnet", "lite")

#: Options read only by some parts, with when they are not read. Setting one
#: away from its default where it is not read is an error, not a silent no-op.
_UNREAD_UNLESS: dict[str, tuple[str, str]] = {
    "expand_ratio": ("mbconv", "without MBConv blocks (block='mbconv')"),
    "kernel_size": ("mbconv", "without MBConv blocks (block='mbconv')"),
    "se_ratio": ("mbconv", "without MBConv blocks (block='mbconv')"),
    "stem_channels": ("resnet_stem", "with stem='lite' (its width is level_filters[1])"),
    "sfm_ratio": ("sfm_squeeze", "with sfm_squeeze=False (the SFM keeps the source's width)"),
}


def _check_one_of(name: str, value: Any, choices: Collection[str], note: str = "") -> None:
    """Raise :class:`ConfigError` ``{name} {value!r} is not one of a, b{note}`` unless ``value`` is in ``choices``."""
    if value not in choices:
        raise ConfigError(f"{name} {value!r} is not one of {', '.join(choices)}{note}")


@dataclass
class BiCSNetConfig:
    """Every knob of the backbone, as plain data (round-trips through dicts).

    Scaling (Table I): ``depth_repeat`` d, ``sfm_ratio`` gamma, ``width_mult``
    omega; level widths are ``make_divisible(level_filters[l] * width_mult,
    channel_divisor)`` (with the default divisor 1: ``max(1, int(...))``).
    Ablations (Tables IX, X): ``topology="csnet"``, the three pathway
    switches, ``spatial_fusion=False`` and ``fpn=True``. ``grad_checkpointing``
    trades compute for training memory (see :meth:`BiCSNet.set_grad_checkpointing`).

    What sits on the graph (the lite models of Section V-E set these, see
    :data:`bicsnet.arch.specs.LITE_PRESET`): ``block`` (``None``: each
    topology row's own block; a registered block type replaces every block),
    ``stem``, the SFM's ``down`` sampling, ``fusion``, ``sfm_squeeze`` and
    ``global_context``, and the MBConv's ``expand_ratio``, ``kernel_size`` and
    ``se_ratio``.
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
    block: str | None = None
    stem: str = "resnet"
    down: str = "conv"
    fusion: str = "sum"
    sfm_squeeze: bool = True
    global_context: bool = True
    expand_ratio: int = 6
    kernel_size: int = 3
    se_ratio: float = 0.25
    channel_divisor: int = 1

    def __post_init__(self) -> None:
        # A read-only preset mapping (specs.LITE_LEVEL_FILTERS) becomes a dict
        # of its own, so configs never share (or deep-copy) one mapping.
        if isinstance(self.level_filters, Mapping) and not isinstance(self.level_filters, dict):
            self.level_filters = dict(self.level_filters)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (JSON-safe: level keys become strings)."""
        d = dataclasses.asdict(self)
        d["level_filters"] = {str(k): v for k, v in self.level_filters.items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "BiCSNetConfig":
        """Inverse of :meth:`to_dict`; unknown keys are an error naming them."""
        reject_unknown_fields(cls, d, "backbone option")
        d = dict(d)
        if "level_filters" in d:
            d["level_filters"] = {int(k): int(v) for k, v in d["level_filters"].items()}
        return cls(**d)

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad option."""
        # Wrong types (e.g. ``--set width_mult=abc``) would fail deep inside the builder.
        kinds = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,), "str | None": (str, type(None))}
        for f in dataclasses.fields(self):
            value, want = getattr(self, f.name), kinds.get(str(f.type))
            if want and (not isinstance(value, want) or (isinstance(value, bool) and bool not in want)):
                raise ConfigError(f"{f.name}={value!r}: expected {f.type}")
        _check_one_of("topology", self.topology, TOPOLOGIES)
        _check_one_of("norm", self.norm, NORM_LAYERS)
        _check_one_of("activation", self.activation, ACTIVATIONS)
        if self.depth_repeat < 1:
            raise ConfigError(f"depth_repeat must be >= 1, got {self.depth_repeat}")
        if not 0 < self.sfm_ratio <= 4:
            raise ConfigError(f"sfm_ratio must be in (0, 4], got {self.sfm_ratio}")
        if self.width_mult <= 0:
            raise ConfigError(f"width_mult must be > 0, got {self.width_mult}")
        if self.endpoint_channels < 1:
            raise ConfigError(f"endpoint_channels must be >= 1, got {self.endpoint_channels}")
        if self.stem_channels < 1:
            raise ConfigError(f"stem_channels must be >= 1, got {self.stem_channels}")
        if not 0 <= self.drop_path_rate < 1:
            raise ConfigError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        if self.block is not None:
            _check_one_of("block", self.block, list_blocks(), " (or None: the topology's)")
        _check_one_of("stem", self.stem, STEMS)
        _check_one_of("down", self.down, DOWN_SAMPLINGS)
        _check_one_of("fusion", self.fusion, FUSIONS)
        if self.expand_ratio < 1:
            raise ConfigError(f"expand_ratio must be >= 1, got {self.expand_ratio}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ConfigError(f"kernel_size must be odd and >= 1, got {self.kernel_size}")
        if not 0 <= self.se_ratio <= 1:
            raise ConfigError(f"se_ratio must be in [0, 1], got {self.se_ratio}")
        if self.channel_divisor < 1:
            raise ConfigError(f"channel_divisor must be >= 1, got {self.channel_divisor}")
        specs = self.specs()
        self._validate_levels(specs)
        reads = {
            "mbconv": any(s.block == "mbconv" for s in specs),
            "resnet_stem": self.stem == "resnet",
            "sfm_squeeze": self.sfm_squeeze,
        }
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name, (part, why) in _UNREAD_UNLESS.items():
            value = getattr(self, name)
            if not reads[part] and value != defaults[name]:
                raise ConfigError(f"{name}={value!r} has no effect {why}")

    def _validate_levels(self, specs: tuple[BlockSpec, ...]) -> None:
        """Output levels, level widths and stem strides the topology needs."""
        if not 1 <= self.min_level <= self.max_level:
            raise ConfigError(f"min_level={self.min_level}, max_level={self.max_level}: need 1 <= min <= max")
        outputs = {s.level for s in specs if s.output}
        missing = [lvl for lvl in range(self.min_level, self.max_level + 1) if lvl not in outputs]
        if missing:
            raise ConfigError(f"topology {self.topology!r} has no output block for level(s) {missing}")
        needed = {s.level for s in specs} | ({1} if self.stem == "lite" else set())
        lacking = sorted(needed - set(self.level_filters))
        if lacking:
            raise ConfigError(f"level_filters lacks level(s) {lacking}")
        for s in specs:
            if s.part == "stem":
                in_level = self.stem_input_level(s, specs)
                if s.level - in_level not in (0, 1):
                    raise ConfigError(
                        f"stem={self.stem!r}: stem block {s.name} cannot go from level {in_level} to {s.level}"
                    )

    def stem_input_level(self, spec: BlockSpec, specs: Sequence[BlockSpec]) -> int:
        """Level a stem block's input arrives at (the ResNet stem's max-pool takes level 1 to 2).

        The block strides by 2^(its level - this); ``specs`` is :meth:`specs`'s table.
        """
        src = spec.inputs[0].source
        if src == STEM_SOURCE:
            return 2 if self.stem == "resnet" else 1
        return next(s.level for s in specs if s.name == src)

    def enabled_pathways(self) -> set[str]:
        """Edge kinds kept by the ablation switches (``main`` always)."""
        on = {"main"}
        for kind, flag in zip(PATHWAYS, (self.gap_connection, self.skip_connection, self.long_range_gap_connection)):
            if flag:
                on.add(kind)
        return on

    def specs(self) -> tuple[BlockSpec, ...]:
        """The topology table with the disabled pathways' edges removed and ``block`` applied."""
        keep = self.enabled_pathways()
        block = {"block": self.block} if self.block is not None else {}
        return tuple(
            dataclasses.replace(s, inputs=tuple(e for e in s.inputs if e.kind in keep), **block)
            for s in TOPOLOGIES[self.topology]
        )

    def filters(self) -> dict[int, int]:
        """Width of every level after the width multiplier."""
        return {lvl: make_divisible(f * self.width_mult, self.channel_divisor) for lvl, f in self.level_filters.items()}

    def block_options(self) -> dict[str, Any]:
        """The block-specific options every block builder receives."""
        return {"expand_ratio": self.expand_ratio, "kernel_size": self.kernel_size, "se_ratio": self.se_ratio}

    @property
    def stem_label(self) -> str:
        """How ``bicsnet draw`` labels the stem."""
        return "7x7 conv" if self.stem == "resnet" else "3x3/2 conv"


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


class PyramidBackbone(nn.Module):
    """A backbone returning an ordered dict ``p<l>`` for consecutive levels, all ``out_channels`` wide.

    Subclasses call :meth:`_declare_outputs` once built; the contract the task
    heads read (``out_channels``, ``strides``, ``size_divisibility``,
    ``out_features``, ``output_shape()``, ``feature_info``) follows from it.
    """

    levels: list[int]
    out_channels: int
    strides: dict[str, int]
    size_divisibility: int

    def _declare_outputs(self, levels: Sequence[int], channels: int, size_divisibility: int | None = None) -> None:
        """Outputs ``p<l>`` for ``levels`` (stride 2^l), ``channels`` wide; padding defaults to the coarsest stride."""
        self.levels = list(levels)
        self.out_channels = channels
        self.strides = {f"p{lvl}": 2**lvl for lvl in self.levels}
        self.size_divisibility = size_divisibility if size_divisibility is not None else 2 ** max(self.levels)

    @property
    def out_features(self) -> list[str]:
        """Output names, finest first."""
        return list(self.strides)

    def output_shape(self) -> dict[str, ShapeSpec]:
        """Channels and stride of each output (detectron2's Backbone contract)."""
        return {p: ShapeSpec(self.out_channels, s) for p, s in self.strides.items()}

    @property
    def feature_info(self) -> list[dict[str, Any]]:
        """timm-style description of the outputs."""
        return [{"name": p, "num_chs": self.out_channels, "reduction": s} for p, s in self.strides.items()]


class BiCSNet(PyramidBackbone):
    """BiCSNet backbone (Section III) producing P3..P7; also the lite backbones (Section V-E).

    Its outputs are named ``p3``..``p7`` (bicsnet's detectors, heads and export
    read these names). torchvision's detectors with default arguments look for
    maps named ``"0"``..``"3"``: ``FasterRCNN(BiCSNet(...), num_classes=3)``
    fails in torchvision's RoI pooler with an ``IndexError``. Use
    :func:`bicsnet.torchvision_backbone` (``FasterRCNN(bicsnet.torchvision_backbone("bicsnet_48"),
    num_classes=3)``; also ``MaskRCNN``, ``KeypointRCNN``, ``RetinaNet``, ``FCOS``).

    Raises:
        ConfigError: a bad configuration (see :meth:`BiCSNetConfig.validate`).
    """

    def __init__(self, config: BiCSNetConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        if config is None:
            config = BiCSNetConfig(**kwargs)
        elif kwargs:
            config = dataclasses.replace(config, **kwargs)
        config.validate()
        self.config = cfg = config
        norm, act = cfg.norm, cfg.activation
        filters = cfg.filters()
        block_options = cfg.block_options()

        # Modules are created in a fixed order (stem, then per block its
        # branches and its group, then endpoints): a seed gives the same weights.
        if cfg.stem == "resnet":
            stem_ch = cfg.stem_channels
            self.stem = ConvNormAct(3, stem_ch, 7, stride=2, norm=norm, act=act)
            self.stem_pool: nn.Module = OneDNNMaxPool2d(3, 2, 1)
        else:
            # Lite: 3x3 stride-2 conv to L1; the first stem block strides to L2.
            stem_ch = filters[1]
            self.stem = ConvNormAct(3, stem_ch, 3, stride=2, norm=norm, act=act)
            self.stem_pool = nn.Identity()
        # name -> (channels, base filters, level) of every feature produced so far.
        feats: dict[str, tuple[int, int, int]] = {STEM_SOURCE: (stem_ch, stem_ch, 1)}

        self.specs = cfg.specs()
        non_stem = [s for s in self.specs if s.part != "stem"]
        self.fusions = nn.ModuleDict()
        self.blocks = nn.ModuleDict()
        for spec in self.specs:
            f = filters[spec.level]
            if spec.part == "stem":
                (src,) = spec.inputs
                stride = 2 ** (spec.level - cfg.stem_input_level(spec, self.specs))
                block = create_block(
                    spec.block, feats[src.source][0], f, cfg.depth_repeat, stride, norm, act, 0.0, **block_options
                )
            else:
                # Every branch projects to the block's input width (= its output
                # width: 4x filters for a bottleneck, filters for residual / MBConv).
                target_in = block_out_channels(spec.block, f)
                branches = [self._branch(feats[e.source], e.kind, target_in, spec.level, f) for e in spec.inputs]
                self.fusions[spec.name] = SpatialFusionModule(branches, act, cfg.fusion)
                # Stochastic depth grows linearly with block index (SpineNet).
                rate = cfg.drop_path_rate * (non_stem.index(spec) + 1) / len(non_stem)
                block = create_block(spec.block, target_in, f, cfg.depth_repeat, 1, norm, act, rate, **block_options)
            self.blocks[spec.name] = block
            feats[spec.name] = (block.out_channels, f, spec.level)

        levels = range(cfg.min_level, cfg.max_level + 1)
        outputs = {s.level: s.name for s in self.specs if s.output}
        self.output_blocks = {f"p{lvl}": outputs[lvl] for lvl in levels}
        c = cfg.endpoint_channels
        # SpineNet's endpoints: 1x1 conv + norm + act to a common width.
        self.endpoints = nn.ModuleDict(
            {p: ConvNormAct(feats[b][0], c, 1, norm=norm, act=act) for p, b in self.output_blocks.items()}
        )
        self.fpn = FeaturePyramidNetwork([c] * len(levels), c) if cfg.fpn else None
        self._endpoint_of = {b: p for p, b in self.output_blocks.items()}
        # Deploy-time horizontal fusion (bicsnet.deploy): per source feature, one
        # module computing every 1x1 conv that reads it (see share_pointwise).
        self.shared_pointwise = nn.ModuleDict()
        self._plan_liveness()
        self._declare_outputs(levels, c, 2**cfg.max_level)

    def _plan_liveness(self) -> None:
        """Which stored tensor each block reads, and which to drop after each block.

        Inference keeps only what a later block still reads, not every block's
        output. A source with a :meth:`share_pointwise` module stores its
        consumers' pre-computed inputs (keys ``"<block>.<edge index>"``) and its
        raw output only while an edge without one still reads it.
        """
        produced: set[str] = set()
        for module in self.shared_pointwise.values():
            produced.update(k for k in module.output_keys if not k.startswith("p"))
        self._input_keys: list[list[str]] = []
        self._raw_needed: set[str] = set()
        last_use: dict[str, int] = {}
        for i, spec in enumerate(self.specs):
            keys = []
            for j, e in enumerate(spec.inputs):
                key = f"{spec.name}.{j}"
                if key not in produced:
                    key = e.source
                    self._raw_needed.add(e.source)
                keys.append(key)
                last_use[key] = i
            self._input_keys.append(keys)
        self._free_after: list[list[str]] = [[] for _ in self.specs]
        for key, i in last_use.items():
            self._free_after[i].append(key)

    def share_pointwise(self, source: str, module: nn.Module) -> None:
        """Compute every 1x1 convolution reading ``source`` in one module (deploy-time horizontal fusion).

        ``module(feature)`` must return a dict with one tensor per name in its
        ``output_keys``: ``"<block>.<edge index>"`` replaces that edge's input
        (the Spatial Fusion Module branch then starts after its squeeze), and
        ``"p<l>"`` is that endpoint's output. Used by :func:`bicsnet.deploy`
        only; a trained model never has one.

        Raises:
            KeyError: ``source`` is not a feature of this backbone.
        """
        if source != STEM_SOURCE and source not in self.blocks:
            raise KeyError(f"no feature named {source!r}")
        self.shared_pointwise[source] = module
        self._plan_liveness()

    def _publish(
        self, name: str, y: torch.Tensor, feats: dict[str, torch.Tensor], outs: dict[str, torch.Tensor]
    ) -> None:
        """Store feature ``name`` (or what its shared pointwise module makes of it) and its endpoint."""
        if name in self.shared_pointwise:
            for key, t in self.shared_pointwise[name](y).items():
                (outs if key.startswith("p") else feats)[key] = t
        p = self._endpoint_of.get(name)
        if p is not None and p not in outs:  # endpoints as soon as their block exists
            outs[p] = self.endpoints[p](y)
        if name in self._raw_needed:
            feats[name] = y

    def _branch(self, src: tuple[int, int, int], kind: str, target_in: int, level: int, filters: int) -> BranchBase:
        """The resampling branch of one edge from ``src`` (channels, base filters, level)."""
        cfg = self.config
        channels, base_filters, src_level = src
        if not cfg.spatial_fusion:
            return PlainResampleBranch(channels, src_level, target_in, level, cfg.norm)
        return ResampleBranch(
            channels, base_filters, src_level, target_in, level, cfg.sfm_ratio, cfg.norm, cfg.activation,
            global_context=cfg.global_context, squeeze=cfg.sfm_squeeze, down=cfg.down,
            mid_channels=self._squeeze_width(kind, src_level, level, filters) if cfg.sfm_squeeze else None,
        )  # fmt: skip

    @property
    def grad_checkpointing(self) -> bool:
        """Whether training recomputes blocks in backward (the config's flag)."""
        return self.config.grad_checkpointing

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each basic block in the backward pass (timm's API).

        With this on, a training step keeps only the block outputs (which
        later fusions and the endpoints read anyway); every block's Spatial
        Fusion Module (squeeze, global context, resampling, projection) and its
        block group run again during backward: less memory
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

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        h, w = x.shape[-2:]
        feats: dict[str, torch.Tensor] = {}
        outs: dict[str, torch.Tensor] = {}
        self._publish(STEM_SOURCE, self.stem(x), feats, outs)
        recompute = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        for i, spec in enumerate(self.specs):
            inputs = [feats[k] for k in self._input_keys[i]]
            size = _level_size(h, w, spec.level)
            if recompute:
                y = checkpoint(self._block, spec, inputs, size, use_reentrant=False)
            else:
                y = self._block(spec, inputs, size)
            self._publish(spec.name, y, feats, outs)
            for key in self._free_after[i]:
                del feats[key]
        out = OrderedDict((p, outs[p]) for p in self.output_blocks)
        if self.fpn is not None:
            out = self.fpn(out)
        return out
