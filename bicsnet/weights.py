"""Weights trained elsewhere, loaded into a bicsnet model: any common file, any wrapper prefix.

:func:`load_weights` (``bicsnet train --weights``, ``create_model(..., pretrained=PATH)``)
fills a whole model; :func:`load_backbone_weights` (``bicsnet train --backbone-weights``)
only its backbone, taken from a checkpoint of any task (the paper's transfer between
tasks, Section V). Both read:

* ``.safetensors`` files, with or without bicsnet's metadata (:mod:`bicsnet.engine.checkpoint`);
* ``torch.save`` files (``.pth``, ``.pt``, ``.bin``, ...), read with
  ``torch.load(weights_only=True)`` (never unpickling code), holding a state dict
  or a training script's dict wrapping one under :data:`WRAPPER_KEYS` (timm,
  torchvision's reference scripts, Lightning, detectron2 and ultralytics save these);
* names with wrapper prefixes: ``module.`` (DDP), ``_orig_mod.`` (``torch.compile``),
  ``model.``, EMA wrappers (``ema.``, ``module.``), ``backbone.`` when the target
  is a bare backbone, and the reverse (a bare backbone's names into a task model's
  ``backbone.``).

The renaming is not a fixed list of guesses: every way of removing up to
:data:`MAX_STRIP` leading name components from the file's names and adding up to
:data:`MAX_ADD` leading components of the model's is scored by the number of
tensors it places on a model tensor of the same shape, and the best one (the
shortest on a tie) is used. The result is a
:class:`~bicsnet.engine.checkpoint.LoadReport`: loaded N of M tensors, then the
missing, unexpected and shape-mismatched ones. Without ``strict``, tensors that do
not fit (a classifier head with another class count) are skipped and reported;
with it, any of them is a :class:`~bicsnet.errors.CheckpointError` naming the file
and the tensors. A file from which nothing loads is always an error.
"""
from __future__ import annotations

import os
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .engine.checkpoint import PROBLEMS, LoadReport, apply_state, exported_model_kind, load_model, safe_torch_load, sniff_format
from .engine.distributed import unwrap_model
from .errors import CheckpointError

__all__ = ["LoadReport", "WRAPPER_KEYS", "WeightsFile", "read_weights", "weights_path", "choose_renaming", "load_weights", "load_backbone_weights"]

#: Keys under which training scripts store the state dict inside a checkpoint dict, in the order
#: tried: the raw weights before EMA ones, as timm's ``load_checkpoint(use_ema=False)`` does.
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module", "ema", "model_ema", "state_dict_ema")
#: Most leading name components removed from the file's names (``ema.module._orig_mod.`` is 3).
MAX_STRIP = 4
#: Most leading components of the model's names added (``backbone.body.body.`` is 3).
MAX_ADD = 3
_REFUSED_HINT = "load it in trusted code and re-save it with torch.save(model.state_dict(), PATH)"


@dataclass
class WeightsFile:
    """The tensors of a weights file.

    Attributes:
        path: the file read.
        tensors: name -> tensor (CPU), as stored (prefixes not yet removed).
        meta: bicsnet's model description when the file has one (``{}`` otherwise).
        entry: where the state dict sat in a checkpoint dict (``"state_dict"``,
            ``"model/state_dict"``); empty when the file is the state dict.
    """

    path: Path
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]
    entry: str = ""


def weights_path(path: str | os.PathLike) -> Path:
    """The weights file ``path`` names: itself, or ``model.safetensors`` in a run directory.

    Raises:
        CheckpointError: no such file.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    return path


def read_weights(path: str | os.PathLike) -> WeightsFile:
    """Read the state dict of a safetensors or ``torch.save`` file (or a run directory's ``model.safetensors``).

    The format is told by the file's first bytes, whatever its suffix; ``torch.save``
    files are read with ``weights_only=True`` on the CPU, and a dict that is not
    itself a state dict is searched for one under :data:`WRAPPER_KEYS` (nested up to 3 deep).

    Raises:
        CheckpointError: naming the file: missing, truncated or corrupt, neither
            format, holding Python objects ``weights_only`` refuses, or holding no tensors.
    """
    path = weights_path(path)
    kind = sniff_format(path)
    if kind is None and path.suffix == ".safetensors":
        kind = "safetensors"  # a damaged one: its reader says what is wrong
    if kind == "safetensors":
        tensors, meta = load_model(path, require_meta=False)
        if not tensors:
            raise CheckpointError(f"{path}: holds no tensors")
        return WeightsFile(path, tensors, meta)
    if kind is None:
        exported = exported_model_kind(path)
        if exported is not None:
            raise CheckpointError(f"{path}: an exported {exported} model, not a weights file: initialise from a "
                                  "model.safetensors or a torch.save state dict")  # fmt: skip
        raise CheckpointError(f"{path}: not a weights file: neither safetensors nor torch.save data (truncated or corrupt?)")
    obj = safe_torch_load(path, what="weights file", refused_hint=_REFUSED_HINT)
    found = _find_state_dict(obj)
    if found is None:
        keys = list(obj)[:8] if isinstance(obj, Mapping) else []
        held = f"a dict with keys {', '.join(map(repr, keys))}" if keys else f"a {type(obj).__name__}"
        raise CheckpointError(
            f"{path}: no state dict found: the file holds {held}; expected tensors by name, "
            f"or a dict with them under one of {', '.join(WRAPPER_KEYS)}"
        )
    tensors, entry = found
    return WeightsFile(path, tensors, {}, entry)


def _find_state_dict(obj: Any, entry: str = "", depth: int = 0) -> tuple[dict[str, torch.Tensor], str] | None:
    """The first state dict in ``obj``: itself if it holds tensors by name, else under a wrapper key."""
    if not isinstance(obj, Mapping):
        return None
    if depth < 3:
        for key in WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                found = _find_state_dict(obj[key], f"{entry}/{key}" if entry else key, depth + 1)
                if found is not None:
                    return found
    # Non-tensor entries beside the tensors (an epoch, a version) are not weights.
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    return (tensors, entry) if tensors else None


def _heads(name: str, most: int) -> list[tuple[str, str]]:
    """``(prefix, rest)`` splits of ``name`` after 0..``most`` leading components.

    ``rest`` keeps at least two components (a module and a tensor name) unless
    nothing is split off: a bare ``weight`` would match every layer's, costing
    time and proving nothing.
    """
    parts = name.split(".")
    return [("".join(p + "." for p in parts[:i]), ".".join(parts[i:])) for i in range(min(most, len(parts) - 2) + 1)] or [("", name)]


def choose_renaming(
    file_shapes: Mapping[str, tuple[int, ...]],
    model_shapes: Mapping[str, tuple[int, ...]],
    *,
    prefix: str | None = None,
    within: str = "",
) -> tuple[str, str]:
    """The ``(strip, add)`` renaming ``name -> add + name[len(strip):]`` that places the most file tensors.

    Candidates remove up to :data:`MAX_STRIP` leading components of file names
    (only ``prefix`` when given) and add ``within`` plus up to :data:`MAX_ADD`
    leading components of model names under ``within``. Score: tensors landing
    on a model tensor of the same shape, then on a model name at all, then the
    shortest renaming (so an exact fit is left as it is).

    Args:
        file_shapes: file tensor name -> shape.
        model_shapes: model tensor name -> shape.
        prefix: the file prefix to remove (forced), or ``None`` to choose.
        within: only model names under this prefix are targets (``"backbone."``).

    Returns:
        ``(strip, add)``; ``(prefix or "", within)`` when nothing matches.
    """
    # Index every model name by what is left after removing 0..MAX_ADD leading components.
    adds_by_rest: dict[str, list[tuple[str, tuple[int, ...]]]] = defaultdict(list)
    for name, shape in model_shapes.items():
        if name.startswith(within):
            for head, rest in _heads(name[len(within) :], MAX_ADD):
                adds_by_rest[rest].append((within + head, tuple(shape)))
    fits: Counter = Counter()
    names: Counter = Counter()
    for name, shape in file_shapes.items():
        if prefix is not None:
            splits = [(prefix, name[len(prefix) :])] if name.startswith(prefix) and len(name) > len(prefix) else []
        else:
            splits = _heads(name, MAX_STRIP)
        shape = tuple(shape)
        for strip, rest in splits:
            for add, target in adds_by_rest.get(rest, ()):
                names[strip, add] += 1
                if target == shape:
                    fits[strip, add] += 1
    if not names:
        return (prefix or "", within)
    return max(sorted(names), key=lambda sa: (fits[sa], names[sa], -len(sa[0]) - len(sa[1])))


def _load(model: nn.Module, path: str | os.PathLike, refuse: frozenset[str] | set[str], prefix: str | None, within: str,
          keep_others: bool) -> LoadReport:  # fmt: skip
    """Read ``path``, rename its tensors to fit ``model`` and copy them (see :func:`load_weights`)."""
    if prefix and not prefix.endswith("."):
        prefix += "."
    wf = read_weights(path)
    own = unwrap_model(model).state_dict()
    strip, add = choose_renaming(
        {k: tuple(v.shape) for k, v in wf.tensors.items()}, {k: tuple(v.shape) for k, v in own.items()}, prefix=prefix, within=within
    )
    taken = {k: v for k, v in wf.tensors.items() if k.startswith(strip) and len(k) > len(strip)}
    others = sorted(set(wf.tensors) - taken.keys())
    if not taken:
        raise CheckpointError(f"{wf.path}: no tensors under '{strip}'; the file's names are e.g. {', '.join(others[:3])}")
    return apply_state(
        model,
        {add + k[len(strip) :]: v for k, v in taken.items()},
        source=str(wf.path),
        refuse=refuse,
        within=within,
        unexpected=others if keep_others else (),
        ignored=() if keep_others else others,
        renamed=f"'{strip}' -> '{add}'" if strip != add else "",
        entry=wf.entry,
    )


def load_weights(model: nn.Module, path: str | os.PathLike, *, strict: bool = False, prefix: str | None = None) -> LoadReport:
    """Load a weights file trained elsewhere into the whole ``model`` (``bicsnet train --weights``).

    Args:
        model: the destination (DDP wrappers are unwrapped); tensors are copied in place.
        path: a ``.safetensors`` or ``torch.save`` file (``.pth``, ``.pt``, ``.bin``), or a run
            directory (its ``model.safetensors``); see :func:`read_weights`.
        strict: refuse any missing, unexpected or shape-mismatched tensor; by default they are
            skipped (e.g. a classifier head of another class count) and listed in the report.
        prefix: load only the file's tensors under this name prefix (removed, e.g.
            ``"backbone."``), ignoring the others; ``None``: the renaming that places the most
            tensors (:func:`choose_renaming`), and file tensors outside it count as unexpected.

    Returns:
        The :class:`~bicsnet.engine.checkpoint.LoadReport` (``summary()``: one line).

    Raises:
        CheckpointError: naming the file: unreadable (see :func:`read_weights`), no tensor
            fits the model, or (``strict``) any tensor that does not fit, naming the first few
            and how many.
    """
    return _load(model, path, PROBLEMS if strict else frozenset(), prefix, "", keep_others=prefix is None)


def load_backbone_weights(model: nn.Module, path: str | os.PathLike, *, prefix: str | None = None) -> LoadReport:
    """Load only the backbone of a weights file of any task into ``model.backbone`` (``--backbone-weights``).

    The paper's transfer between tasks (Section V: a classifier's or detector's
    backbone into a detector or segmenter). Every backbone tensor of ``model``
    must be in the file with the same shape; the file's other tensors (its head)
    are ignored, and ``model``'s head is left as it is. A model without a
    ``backbone`` submodule (a bare backbone) is filled whole. The file may be any
    format :func:`read_weights` reads, with any prefixes (:func:`choose_renaming`).

    Args:
        model: a task model with a ``backbone`` submodule, or a backbone.
        path: the weights file (or run directory).
        prefix: the file's prefix of the backbone's tensors (e.g. ``"module.backbone."``);
            ``None``: chosen to place the most tensors.

    Raises:
        CheckpointError: naming the file: unreadable, or a backbone tensor missing
            from it or of another shape (naming the first few and how many).
    """
    within = "backbone." if isinstance(getattr(unwrap_model(model), "backbone", None), nn.Module) else ""
    return _load(model, path, frozenset({"missing", "mismatched"}), prefix, within, keep_others=False)
