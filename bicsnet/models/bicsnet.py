"""The BiCSNet family: Table I's models, the ablations of Tables IX and X, a tiny CPU model.

Each model is a row of data on one builder: a topology table
(:mod:`bicsnet.arch.specs`) and a row of the scaling table (``SCALING``, Table I)
make a :class:`~bicsnet.arch.backbone.BiCSNetConfig`; ablations flip its
switches. Every entry point supports every task of :data:`bicsnet.tasks.TASKS`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from ..arch.backbone import BiCSNet, BiCSNetConfig
from ..arch.specs import SCALING
from .factory import register_pyramid_model

__all__ = ["BICSNET_TINY", "ABLATIONS"]

#: Options that make any BiCSNet model tiny (tests, CPU smoke runs).
BICSNET_TINY = {"width_mult": 0.125, "endpoint_channels": 16}


def _config(key: str) -> BiCSNetConfig:
    s = SCALING[key]
    return BiCSNetConfig(depth_repeat=s.depth_repeat, sfm_ratio=s.sfm_ratio, width_mult=s.width_mult, endpoint_channels=s.endpoint_channels)


def _register(name: str, config: BiCSNetConfig, input_size: int, description: str, anchor_scale: float = 3.0) -> None:
    # Anchor scale 3 up to BiCSNet-94, 4 for BiCSNet-140 (V-A1); Mask R-CNN keeps its own.
    register_pyramid_model(
        name, config=config, build_backbone=BiCSNet, input_size=input_size, description=description, tiny=BICSNET_TINY,
        head_defaults={"detection": {"anchor_scale": anchor_scale}},
    )  # fmt: skip


# Table I: BiCSNet-48S/48/48L/94/140.
for _key, _s in SCALING.items():
    _register(f"bicsnet_{_key}", _config(_key), _s.input_size, f"BiCSNet-{_key.upper()} (Table I)", 4.0 if _key == "140" else 3.0)

#: Ablations of Tables IX and X: switches on BiCSNet-48's configuration.
ABLATIONS: dict[str, tuple[dict[str, Any], str]] = {
    "bicsnet_48_no_gac": ({"gap_connection": False}, "BiCSNet-48 without Gap-Connection (Table X)"),
    "bicsnet_48_no_skc": ({"skip_connection": False}, "BiCSNet-48 without Skip-Connection (Table X)"),
    "bicsnet_48_no_lrgac": ({"long_range_gap_connection": False}, "BiCSNet-48 without Long-Range Gap-Connection (Table X)"),
    "bicsnet_48_no_sfm": ({"spatial_fusion": False}, "BiCSNet-48 with plain resampling instead of SFM (Table X)"),
    "bicsnet_48_fpn": ({"fpn": True}, "BiCSNet-48 with an FPN attached (Table X)"),
    "csnet_48": ({"topology": "csnet"}, "CSNet-48: Up-Sampling Part replaced by a Down-Sampling Part (Table IX)"),
}
for _name, (_over, _desc) in ABLATIONS.items():
    _register(_name, dataclasses.replace(_config("48"), **_over), SCALING["48"].input_size, _desc)

# Not from the paper: a narrow BiCSNet-48 for CPU demos and quick experiments.
_register(
    "bicsnet_48_tiny",
    dataclasses.replace(_config("48"), width_mult=0.25, endpoint_channels=64, sfm_ratio=0.5),
    256,
    "BiCSNet-48 topology at 1/4 width, 64-d outputs (CPU demos; not a paper model)",
)

