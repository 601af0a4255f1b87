"""BiCSNet topologies as data, and the scaling table (paper Table I).

A topology is a table of :class:`BlockSpec` rows, read top to bottom like
Fig. 3d: each row is one basic block T at a feature level, with the edges that
feed it. Edge kinds name the paper's pathways:

* ``main``  - the bidirectional network itself: D(x) in eqs. (1) and (3),
  up(x) in eq. (2);
* ``gap``   - Gap-Connection, eq. (4): level i-2 of the Down-Sampling Part
  into level i;
* ``skip``  - Skip-Connection, eq. (5): Down-Sampling Part level i into
  Up-Sampling Part level i;
* ``long_range_gap`` - Long-Range Gap-Connection, eq. (6): Up-Sampling Part
  level i-1 into End Down-Sampling Part level i.

Every edge is resampled to its block's level and width by a Spatial Fusion
Module branch (Section III-C) and the branches are summed. Ablations of
Table X drop edges by kind; CSNet (Table IX) is its own table.

Parts of the network (``BlockSpec.part``): ``stem`` (ResNet-50's), ``down``
(Down-Sampling Part, eq. (1)), ``up`` (Up-Sampling Part, eq. (2)), ``end``
(End Down-Sampling Part, eq. (3)); CSNet's second Down-Sampling Part is
``down2``.

Also here, as data: Table I's scaling rows (:data:`SCALING`) and the lite
family's preset (:data:`LITE_PRESET`, Section V-E), which puts MBConv blocks
and a lighter SFM on the same tables.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping

__all__ = [
    "Edge",
    "BlockSpec",
    "PATHWAYS",
    "STEM_SOURCE",
    "BICSNET_SPECS",
    "CSNET_SPECS",
    "TOPOLOGIES",
    "Scaling",
    "SCALING",
    "LEVEL_FILTERS",
    "LITE_LEVEL_FILTERS",
    "LITE_PRESET",
]

#: Edge kinds that are cross-scale pathways (removable by the ablation switches).
PATHWAYS = ("gap", "skip", "long_range_gap")

#: Name of the stem's level-1 feature (the 7x7 stride-2 convolution's output).
STEM_SOURCE = "stem_conv"

#: Base ``filters`` per level before the width multiplier (ResNet-50 / SpineNet):
#: a bottleneck block outputs 4x this, a residual block 1x.
LEVEL_FILTERS = {2: 64, 3: 128, 4: 256, 5: 256, 6: 256, 7: 256}


@dataclass(frozen=True)
class Edge:
    """One input of a block: ``source`` block name and the pathway ``kind``."""

    source: str
    kind: str = "main"


@dataclass(frozen=True)
class BlockSpec:
    """One basic block T: its part of the network, level, block type and inputs."""

    name: str
    part: str  # "stem" | "down" | "up" | "end"
    level: int
    block: str  # a registered block type: "bottleneck" | "residual" (| "mbconv" via the config)
    inputs: tuple[Edge, ...]
    output: bool = False


def _b(name: str, part: str, level: int, block: str, *inputs: tuple[str, str], output: bool = False) -> BlockSpec:
    return BlockSpec(name, part, level, block, tuple(Edge(s, k) for s, k in inputs), output)


def _end_part(prev: tuple[str, str, str, str], *end7_extra: tuple[str, str]) -> tuple[BlockSpec, ...]:
    """End Down-Sampling Part L3..L7, eq. (3): bottlenecks, every one an output.

    ``prev`` names the blocks of the part before it at L3..L6. ``end3`` follows
    ``prev[0]``, each ``end<l>`` above follows ``end<l-1>`` (D, main path), and
    every ``end<l>`` takes the Long-Range Gap-Connection of eq. (6) from the
    block one level below it (``stem3`` for L3, ``prev[l - 4]`` above).
    ``end7_extra`` are further ``(source, kind)`` inputs of ``end7``.
    """
    mains = (prev[0], "end3", "end4", "end5", "end6")
    below = ("stem3",) + prev
    return tuple(
        _b(f"end{lvl}", "end", lvl, "bottleneck", (main, "main"), (gap, "long_range_gap"),
           *(end7_extra if lvl == 7 else ()), output=True)
        for lvl, main, gap in zip(range(3, 8), mains, below)
    )  # fmt: skip


# fmt: off
#: BiCSNet-48 (Fig. 3d). Stem: ResNet-50's, two level-2 bottlenecks as SpineNet.
#: Down-Sampling Part L3..L7, eq. (1), each fed by D(previous) and a
#: Gap-Connection from two levels below, eq. (4) (for L3 that is the stem's
#: level-1 feature). Up-Sampling Part L6..L3, eq. (2), each fed by up(previous)
#: and a Skip-Connection from the Down-Sampling block of its level, eq. (5).
#: End Down-Sampling Part L3..L7, eq. (3), fed by D(previous) (End L3: Up L3 itself)
#: and a Long-Range Gap-Connection from the block one level below, eq. (6) (End L3:
#: the stem). Outputs: P3-P7 from the End Part (docs/architecture.md, "17 blocks").
BICSNET_SPECS: tuple[BlockSpec, ...] = (
    _b("stem1", "stem", 2, "bottleneck", (STEM_SOURCE, "main")),
    _b("stem2", "stem", 2, "bottleneck", ("stem1", "main")),
    _b("stem3", "stem", 2, "bottleneck", ("stem2", "main")),
    _b("down3", "down", 3, "bottleneck", ("stem3", "main"), (STEM_SOURCE, "gap")),
    _b("down4", "down", 4, "residual",   ("down3", "main"), ("stem3", "gap")),
    _b("down5", "down", 5, "bottleneck", ("down4", "main"), ("down3", "gap")),
    _b("down6", "down", 6, "residual",   ("down5", "main"), ("down4", "gap")),
    _b("down7", "down", 7, "residual",   ("down6", "main"), ("down5", "gap")),
    _b("up6",   "up",   6, "residual",   ("down7", "main"), ("down6", "skip")),
    _b("up5",   "up",   5, "bottleneck", ("up6",   "main"), ("down5", "skip")),
    _b("up4",   "up",   4, "residual",   ("up5",   "main"), ("down4", "skip")),
    _b("up3",   "up",   3, "bottleneck", ("up4",   "main"), ("down3", "skip")),
    *_end_part(("up3", "up4", "up5", "up6")),  # end3..end7
)

#: CSNet-48 (Table IX): the Up-Sampling Part replaced by a second
#: Down-Sampling Part, keeping every cross-scale pathway. The paper gives no
#: figure of it; our reading: the second part climbs L3..L6 again from the
#: stem with the Skip-Connections of its levels, the End Part follows it as
#: in BiCSNet, and L7 of the first part joins the End Part's L7 through a
#: Skip-Connection (otherwise it would feed nothing).
CSNET_SPECS: tuple[BlockSpec, ...] = BICSNET_SPECS[:8] + (
    _b("down2_3", "down2", 3, "bottleneck", ("stem3",   "main"), ("down3", "skip")),
    _b("down2_4", "down2", 4, "residual",   ("down2_3", "main"), ("down4", "skip")),
    _b("down2_5", "down2", 5, "bottleneck", ("down2_4", "main"), ("down5", "skip")),
    _b("down2_6", "down2", 6, "residual",   ("down2_5", "main"), ("down6", "skip")),
    *_end_part(("down2_3", "down2_4", "down2_5", "down2_6"), ("down7", "skip")),  # end3..end7
)
# fmt: on

TOPOLOGIES: dict[str, tuple[BlockSpec, ...]] = {"bicsnet": BICSNET_SPECS, "csnet": CSNET_SPECS}


@dataclass(frozen=True)
class Scaling:
    """One row of Table I."""

    input_size: int
    depth_repeat: int  # d: blocks per block group
    sfm_ratio: float  # gamma: SFM feature multiplier
    width_mult: float  # omega: width multiplier
    endpoint_channels: int = 256  # P3-P7 width (SpineNet uses 128 for its S model)


#: Table I. ``endpoint_channels`` is not in the table; 128 for 48S follows
#: SpineNet-49S and is what reproduces Table II's 33.6B for 48S.
SCALING: dict[str, Scaling] = {
    "48s": Scaling(640, 1, 0.5, 0.75, 128),
    "48": Scaling(640, 1, 0.6, 1.0),
    "48l": Scaling(896, 1, 0.6, 1.0),
    "94": Scaling(1024, 2, 0.5, 1.1),
    "140": Scaling(1280, 3, 1.0, 1.0),
}


#: Feature dimension per level L1..L7 before the width multiplier (Section V-E,
#: following [63]: SpineNet-Mobile's FILTER_SIZE_MAP, EfficientNet-B0's widths).
LITE_LEVEL_FILTERS: Mapping[int, int] = MappingProxyType({1: 16, 2: 24, 3: 40, 4: 80, 5: 112, 6: 112, 7: 112})

#: The BiCSNet-lite backbone (Section V-E, Table VII): the
#: :class:`~bicsnet.arch.backbone.BiCSNetConfig` fields whose values differ
#: from BiCSNet's. ``bicsnet.models.lite`` adds each model's width multiplier
#: and P3-P7 width (its ``LITE_SCALING`` row).
LITE_PRESET: Mapping[str, Any] = MappingProxyType(
    {
        "block": "mbconv",
        "stem": "lite",
        "down": "space_to_depth",
        "fusion": "fast_normalized",
        "sfm_squeeze": False,
        "activation": "swish",
        "level_filters": LITE_LEVEL_FILTERS,
        "channel_divisor": 8,
        "endpoint_channels": 64,
    }
)
"""BiCSNet-lite0..3: the on-device detectors of Section V-E (Table VII).

Same block graph as BiCSNet (the topology tables above, read, not copied);
what changes is what sits on the graph:

* every basic block T is an MBConv block (``block="mbconv"``; inverted
  bottleneck: 1x1 expand x6, 3x3 depthwise, optional squeeze-excitation,
  1x1 project, identity shortcut), with level widths {16, 24, 40, 80, 112,
  112, 112} for L1..L7 (SpineNet-Mobile / EfficientNet-B0 widths, the paper's
  [63], :data:`LITE_LEVEL_FILTERS`) times the width multiplier, rounded to
  multiples of 8 (``channel_divisor=8``). Blocks keep their width (in = out
  = the level's width), so every fusion projects to that width;
* the stem is a 3x3 stride-2 conv to L1 (``stem="lite"``; kernels larger than
  3x3 become 3x3) and the stem blocks are MBConvs, the first one strided to L2
  in place of the max-pool;
* the Spatial Fusion Module loses its 1x1 squeeze (``sfm_squeeze=False``; the
  branch works at the source's width, its two global-context steps and its
  final projection stay), down-sampling is space-to-depth followed by a
  stride-2 conv (a 2x2 pixel-unshuffle and a 1x1 conv,
  ``down="space_to_depth"``), and the inputs of a block are fused by
  EfficientDet's fast normalised fusion (``fusion="fast_normalized"``);
* swish activations (``activation="swish"``), as EfficientNet;
* the box and class subnets use depthwise-separable convolutions with a norm
  per pyramid level, EfficientDet-style (``bicsnet.models.lite_head``).

The lite backbone is a :class:`~bicsnet.arch.backbone.BiCSNet` like any other,
so it has BiCSNet's contract (ordered dict ``p3..p7``, ``out_channels``,
``out_features``, ``strides``, ``size_divisibility`` 128, ``output_shape()``,
``config.to_dict()``), feature freeing and gradient checkpointing.
``docs/architecture.md`` ("BiCSNet-lite") records the choices and the figures
that led to them.
"""
