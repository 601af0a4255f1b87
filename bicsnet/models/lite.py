"""The BiCSNet-lite family: the on-device detectors of Section V-E (Table VII).

Same block graph as BiCSNet (the topology tables of :mod:`bicsnet.arch.specs`),
with what sits on it changed through configuration fields (see
``docs/architecture.md``, "BiCSNet-lite"): MBConv blocks at SpineNet-Mobile /
EfficientNet-B0 level widths, a 3x3 stem, a Spatial Fusion Module without its
squeeze whose down-sampling is space-to-depth, fast normalised fusion, and
EfficientDet-style separable box and class subnets
(:mod:`bicsnet.models.lite_head`). Each model is a row of :data:`LITE_SCALING`.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from ..arch.backbone import BiCSNet, BiCSNetConfig
from ..arch.specs import LITE_PRESET
from .factory import register_pyramid_model
from .lite_head import build_lite_head

__all__ = ["LiteScaling", "LITE_SCALING", "LITE_TINY", "lite_config"]


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

#: Options that make a lite model tiny (tests, CPU demos).
LITE_TINY = {"width_mult": 0.25, "endpoint_channels": 16, "expand_ratio": 2}


def lite_config(key: str) -> BiCSNetConfig:
    """The backbone configuration of ``bicsnet_<key>`` (e.g. ``lite0``): the lite preset at its row's width."""
    s = LITE_SCALING[key]
    row = {"width_mult": s.width_mult, "endpoint_channels": s.endpoint_channels}
    return BiCSNetConfig.from_dict({**LITE_PRESET, **row})


def _register(key: str, s: LiteScaling) -> None:
    # RetinaNet with the separable subnets (BN per level); other tasks use the usual heads.
    head = partial(build_lite_head, channels=s.head_channels, num_layers=s.head_layers)
    register_pyramid_model(
        f"bicsnet_{key}", config=lite_config(key), build_backbone=BiCSNet, input_size=s.input_size,
        description=f"BiCSNet-{key} (Table VII): MBConv blocks, width x{s.width_mult}, "
        f"{s.endpoint_channels}-d P3-P7, {s.head_layers}x{s.head_channels} separable subnets",
        tiny=LITE_TINY, head_defaults={"detection": {"head_norm": "bn", "anchor_scale": 3.0, "head_factory": head}},
    )  # fmt: skip


for _key, _s in LITE_SCALING.items():
    _register(_key, _s)
