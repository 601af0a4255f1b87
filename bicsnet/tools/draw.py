"""Render a topology's block graph (the paper's Fig. 3d) from its spec table.

Blocks are laid out left to right in execution order, at a height given by
their level (L2 at the top, L7 at the bottom, as resolution falls). Shapes and
colours follow Fig. 3: rectangles are bottleneck blocks, diamonds residual
blocks; the yellow edges are Gap-Connections, green Skip-Connections, blue
Long-Range Gap-Connections, black the bidirectional main path.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import FancyArrowPatch  # noqa: E402

from ..arch.specs import STEM_SOURCE  # noqa: E402
from ..errors import ConfigError  # noqa: E402
from ..io import atomic_save  # noqa: E402

__all__ = ["EDGE_COLOURS", "STEM_LABELS", "draw_topology", "stem_label"]

EDGE_COLOURS = {"main": "black", "gap": "#e6b800", "skip": "#2ca02c", "long_range_gap": "#1f77b4"}
PART_COLOURS = {"stem": "#dddddd", "down": "#fdd0a2", "down2": "#fdae6b", "up": "#c7e9c0", "end": "#c6dbef"}
BLOCK_MARKERS = {"bottleneck": ("s", 9), "residual": ("D", 8), "mbconv": ("h", 10)}  # lite models: MBConv
#: Stem labels by the config's ``stem`` field: ResNet-50's 7x7/2 conv (+ max-pool), the lite 3x3/2 conv.
STEM_LABELS = {"resnet": "7x7 conv", "lite": "3x3/2 conv"}


def stem_label(config: Any) -> str:
    """How the stem is labelled: the config's ``stem_label`` if it has one, else from its ``stem`` field.

    Configs are read through ``getattr`` with defaults, so any config with a
    ``specs()`` table draws (one without ``stem`` has BiCSNet's ResNet stem).
    """
    label = getattr(config, "stem_label", None)
    if label:
        return str(label)
    stem = getattr(config, "stem", "resnet")
    return STEM_LABELS.get(stem, f"{stem} stem")


def draw_topology(config: Any, path: str | os.PathLike, title: str | None = None) -> Path:
    """Draw ``config``'s block graph to ``path`` (.png, .svg or .pdf), atomically.

    ``config`` is a backbone configuration with a ``specs()`` table of
    :class:`~bicsnet.arch.specs.BlockSpec` rows and a ``topology`` name (a
    :class:`~bicsnet.arch.backbone.BiCSNetConfig`; the registry entry's ``config``).

    Raises:
        ConfigError: ``path`` is not a .png, .svg or .pdf file name.
    """
    path = Path(path)
    if path.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise ConfigError(f"--out {path}: use a .png, .svg or .pdf file name")
    specs = config.specs()
    pos = {STEM_SOURCE: (0.0, 1.0)}
    for i, s in enumerate(specs, start=1):
        pos[s.name] = (float(i), float(s.level))
    fig, ax = plt.subplots(figsize=(max(8, 0.75 * len(specs) + 2), 5))
    for s in specs:
        x1, y1 = pos[s.name]
        for e in s.inputs:
            x0, y0 = pos[e.source]
            rad = 0.0 if e.kind == "main" else (0.35 if y0 <= y1 else -0.35)
            ax.add_patch(
                FancyArrowPatch(
                    (x0, y0), (x1, y1), arrowstyle="-|>", mutation_scale=12, lw=1.6,
                    color=EDGE_COLOURS[e.kind], connectionstyle=f"arc3,rad={rad}", shrinkA=9, shrinkB=9, zorder=1,
                )
            )
    for s in specs:
        x, y = pos[s.name]
        marker = BLOCK_MARKERS.get(s.block, ("o", 9))[0]
        ax.scatter([x], [y], s=420, marker=marker, c=PART_COLOURS.get(s.part, "white"), edgecolors="black",
                   linewidths=2.5 if s.output else 1, zorder=2)
        ax.annotate(s.name, (x, y), textcoords="offset points", xytext=(0, -20), ha="center", fontsize=7)
    ax.scatter([0], [1], s=300, marker="o", c="white", edgecolors="black", zorder=2)
    ax.annotate(stem_label(config), (0, 1), textcoords="offset points", xytext=(0, -18), ha="center", fontsize=7)
    ax.set_yticks(range(1, 8), [f"L{lvl}" for lvl in range(1, 8)])
    ax.set_ylim(8.2, 0.4)
    ax.set_xlim(-0.7, len(specs) + 0.7)
    ax.set_xticks([])
    ax.set_title(title or f"{getattr(config, 'topology', 'bicsnet')} topology")
    handles = [Line2D([], [], color=c, lw=2, label=k.replace("_", "-")) for k, c in EDGE_COLOURS.items()]
    for block in sorted({s.block for s in specs}):
        m, ms = BLOCK_MARKERS.get(block, ("o", 9))
        handles.append(Line2D([], [], marker=m, ls="", mfc="white", mec="black", ms=ms, label=block))
    handles.append(Line2D([], [], marker="s", ls="", mfc="white", mec="black", mew=2.5, ms=9, label="output P3-P7"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    fmt = path.suffix.lower().lstrip(".")
    atomic_save(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=150))
    plt.close(fig)
    return path
