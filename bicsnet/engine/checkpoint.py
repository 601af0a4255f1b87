"""Checkpoints: model weights (safetensors), training state, run-directory layout.

Model weights are safetensors files whose metadata holds, under the key
``"bicsnet"``, a JSON object describing the model (name, task, number of
classes, overrides, image size, class names, COCO category ids, ...), so a
weights file alone is enough for ``bicsnet eval`` / ``bicsnet predict``.

Training state (optimiser, scheduler, AMP scaler, EMA counters, RNG states,
data position, config) is a ``torch.save`` file restricted to tensors and
plain Python containers, and is only ever read with
``torch.load(..., weights_only=True)``: a file that would execute code when
unpickled is refused.

Layout inside a run directory ``OUT``::

    OUT/checkpoints/last.safetensors      model weights at the newest step
    OUT/checkpoints/last.state.pt         training state at the same step
    OUT/checkpoints/last_ema.safetensors  EMA weights (when EMA is on)
    OUT/checkpoints/prev.*                the previous complete checkpoint
    OUT/model.safetensors                 final weights (EMA if on), for eval/predict

Every file carries the step and a random save id; a weights file and a state
file only form a checkpoint when their ids match.  :class:`RunCheckpointer`
writes a new checkpoint under temporary names, then rotates ``last`` to
``prev`` and the new files to ``last``; whenever the process is killed, the
newest checkpoint whose files are all present is still on disk (under
``last``, ``prev`` or temporary names) and :meth:`RunCheckpointer.latest`
finds it.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Mapping, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import CheckpointError
from ..io import atomic_save

__all__ = [
    "META_KEY",
    "save_model",
    "load_model",
    "read_model_meta",
    "LoadReport",
    "PROBLEMS",
    "apply_state",
    "upgrade_legacy_names",
    "load_state_into",
    "sniff_format",
    "exported_model_kind",
    "safe_torch_load",
    "save_training_state",
    "load_training_state",
    "CheckpointSet",
    "RunCheckpointer",
]

#: safetensors metadata key holding the model description (JSON).
META_KEY = "bicsnet"
#: safetensors metadata key pairing a weights file with its training state.
_INFO_KEY = "bicsnet_checkpoint"


def _plain_state_dict(model_or_state_dict: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous, non-aliased copies of every tensor.

    safetensors refuses tensors sharing storage (tied weights, views), so each
    tensor is cloned into its own storage.
    """
    if isinstance(model_or_state_dict, nn.Module):
        from .distributed import unwrap_model  # local: distributed imports nothing from here

        state = unwrap_model(model_or_state_dict).state_dict()
    else:
        state = dict(model_or_state_dict)
    out: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"state dict entry {name!r} is a {type(value).__name__}, not a tensor")
        out[name] = value.detach().to("cpu", copy=True).contiguous()
    return out


def save_model(
    path: str | os.PathLike,
    model_or_state_dict: nn.Module | Mapping[str, torch.Tensor],
    meta: Mapping[str, Any],
    *,
    checkpoint_info: Mapping[str, Any] | None = None,
) -> None:
    """Write model weights and their description to a safetensors file, atomically.

    Args:
        path: destination ``.safetensors`` file.
        model_or_state_dict: a module (DDP wrappers are unwrapped) or a state dict.
        meta: JSON-serialisable description, stored under metadata key ``"bicsnet"``.
        checkpoint_info: step / save id pairing this file with a training
            state (used by :class:`RunCheckpointer`).
    """
    tensors = _plain_state_dict(model_or_state_dict)
    metadata = {"format": "pt", META_KEY: json.dumps(dict(meta), sort_keys=True)}
    if checkpoint_info is not None:
        metadata[_INFO_KEY] = json.dumps(dict(checkpoint_info), sort_keys=True)
    atomic_save(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


#: What to do with a file that is weights but not a bicsnet checkpoint (eval, predict, export need the description).
_PLAIN_WEIGHTS_HINT = (
    "eval, predict and export need a bicsnet model.safetensors, which describes its model; initialise a model "
    "from these weights with bicsnet train --weights {path} or create_model(..., pretrained=...)"
)


def sniff_format(path: str | os.PathLike) -> str | None:
    """``"safetensors"``, ``"torch"`` (a ``torch.save`` zip or legacy pickle) or ``None``, from the first bytes.

    safetensors files start with an 8-byte little-endian header length and a
    JSON object (the safetensors format); ``torch.save`` writes a zip archive
    (``PK``) or, in the legacy format, a pickle (protocol byte ``0x80``).
    """
    try:
        with open(path, "rb") as f:
            head = f.read(9)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return None
    # safetensors first: its header length's low byte may be 0x80, a pickle's first byte.
    if len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") <= size - 8:
        return "safetensors"
    if head[:4] == b"PK\x03\x04" or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")):
        return "torch"
    return None


#: Suffixes of exported models (ONNX, OpenVINO IR, TensorRT engines), by what they are.
#: (Not ``.bin``: OpenVINO's weights file has no header, and the suffix is common for other files.)
_EXPORTED_SUFFIXES = {".onnx": "ONNX", ".xml": "OpenVINO", ".engine": "TensorRT", ".plan": "TensorRT"}


def exported_model_kind(path: str | os.PathLike) -> str | None:
    """What kind of exported model ``path`` is (``"ONNX"``, ``"OpenVINO"``, ``"TensorRT"``), else None.

    From the suffix (``.onnx``, ``.xml``, ``.engine``, ``.plan``) or,
    whatever the suffix, an XML file whose root is ``<net>`` (OpenVINO IR). Lets the checkpoint and
    weights readers say "an exported model" instead of "corrupt".
    """
    path = Path(path)
    kind = _EXPORTED_SUFFIXES.get(path.suffix.lower())
    if kind is not None:
        return kind
    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError:
        return None
    # OpenVINO IR: an optional XML declaration, then the <net> root (other XML, e.g. VOC, is not claimed).
    return "OpenVINO" if re.match(rb"\s*(<\?xml[^>]*\?>\s*)?<net[\s>]", head) else None


def _read_metadata(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    fmt = sniff_format(path)
    kind = exported_model_kind(path)
    if kind is not None and fmt != "safetensors":
        raise CheckpointError(
            f"{path}: an exported {kind} model, not a bicsnet checkpoint: eval, predict and export take a training "
            "run's model.safetensors (or its run directory); run an exported model with "
            "bicsnet.tools.runtimes.load_exported"
        )
    if fmt == "torch":
        raise CheckpointError(f"{path}: a PyTorch (torch.save) weights file, not a bicsnet checkpoint: "
                              + _PLAIN_WEIGHTS_HINT.format(path=path))  # fmt: skip
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as exc:  # safetensors raises its own error type for every kind of damage
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): {exc}") from None


def _parse_meta(path: Path, metadata: Mapping[str, str], require_meta: bool) -> dict[str, Any]:
    raw = metadata.get(META_KEY)
    if raw is None:
        if require_meta:
            raise CheckpointError(f"{path}: safetensors file has no '{META_KEY}' metadata (not a bicsnet checkpoint): "
                                  + _PLAIN_WEIGHTS_HINT.format(path=path))  # fmt: skip
        return {}
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: '{META_KEY}' metadata is not valid JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: '{META_KEY}' metadata is not a JSON object")
    return meta


def read_model_meta(path: str | os.PathLike, require_meta: bool = True) -> dict[str, Any]:
    """Read only the ``"bicsnet"`` description of a weights file (no tensor data)."""
    path = Path(path)
    return _parse_meta(path, _read_metadata(path), require_meta)


def load_model(path: str | os.PathLike, require_meta: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load ``(state_dict, meta)`` from a safetensors weights file on CPU.

    Raises :class:`CheckpointError` naming the file if it is missing,
    truncated, not safetensors, or (with ``require_meta``) lacks the bicsnet
    description.
    """
    path = Path(path)
    meta = _parse_meta(path, _read_metadata(path), require_meta)
    try:
        state = load_file(str(path), device="cpu")
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read tensors (truncated or corrupt?): {exc}") from None
    return state, meta


def _read_checkpoint_info(path: Path) -> dict[str, Any] | None:
    raw = _read_metadata(path).get(_INFO_KEY)
    return json.loads(raw) if raw else None


#: BatchNorm's buffers: a file holding only these beyond the model has BatchNorm where the model has another norm.
_BN_BUFFERS = (".running_mean", ".running_var", ".num_batches_tracked")
_BN_HINT = (": BatchNorm statistics where the model normalises otherwise; e.g. the small-data recipe's GroupNorm "
            "head (--set head_norm=bn or --recipe paper builds a BatchNorm head)")  # fmt: skip

#: The ways a file can fail to fit a model, as :func:`apply_state` refuses them.
PROBLEMS = frozenset({"missing", "unexpected", "mismatched"})


@dataclass
class LoadReport:
    """What loading a state dict into a model did (names as in the model unless said otherwise).

    Attributes:
        loaded: model tensors copied from the file.
        missing: model tensors the file does not hold (left as they were).
        unexpected: file tensors with no place in the model (after renaming; not loaded).
        mismatched: ``(name, shape in the file, shape in the model)`` of tensors skipped for their shape.
        ignored: file tensors outside the part that was asked for (e.g. a detector's head
            when only its backbone is loaded): never loaded, never an error.
        total: model tensors the file could have filled (the M of "loaded N of M").
        source: the file, for messages.
        renamed: how file names became model names, e.g. ``"'module.' -> ''"``; empty when they did not change.
        entry: the entry of the file holding the state dict (e.g. ``"state_dict"``); empty when the file is one.
    """

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    total: int = 0
    source: str = "checkpoint"
    renamed: str = ""
    entry: str = ""

    def problems(self, kinds: Collection[str] = PROBLEMS) -> list[str]:
        """The ``kinds`` (of :data:`PROBLEMS`) present, each as ``"N <kind> (first names)"``."""
        name = Path(self.source).name
        shapes = [f"{k}: {fs} in {name} vs {ms} in model" for k, fs, ms in self.mismatched]
        found = [
            ("mismatched", shapes, f"{len(shapes)} tensor shape mismatch(es): {_first(shapes, 3)}"),
            ("missing", self.missing, f"{len(self.missing)} missing from the file ({_first(self.missing)})"),
            ("unexpected", self.unexpected, f"{len(self.unexpected)} unexpected, not in the model ({_first(self.unexpected)})"
             + (_BN_HINT if self.unexpected and all(k.endswith(_BN_BUFFERS) for k in self.unexpected) else "")),
        ]  # fmt: skip
        return [text for kind, names, text in found if names and kind in kinds]

    def summary(self) -> str:
        """One line: ``loaded N of M tensors``, the renaming, then what did not fit (first names and counts)."""
        head = f"loaded {len(self.loaded)} of {self.total} tensors"
        how = [f"from entry '{self.entry}'"] if self.entry else []
        if self.renamed:
            how.append(f"names {self.renamed}")
        if how:
            head += f" ({', '.join(how)})"
        tail = self.problems()
        if self.ignored:
            tail.append(f"{len(self.ignored)} other file tensors ignored ({_first(self.ignored, 3)})")
        return "; ".join([head, *tail])


def _first(names: list[str], n: int = 5) -> str:
    shown = ", ".join(names[:n])
    return shown + (f", ... (+{len(names) - n} more)" if len(names) > n else "")


def upgrade_legacy_names(model: nn.Module, tensors: dict[str, torch.Tensor]) -> list[str]:
    """Rename, in place, tensors that an earlier layout of one of ``model``'s modules had.

    Every submodule with an ``upgrade_legacy_tensors(prefix, tensors) -> bool``
    method renames its own tensors (e.g. RetinaNet's subnets, which once shared
    one norm layer across pyramid levels:
    :meth:`bicsnet.models.detection.FocalLossClassificationHead.upgrade_legacy_tensors`).
    Returns the names of the modules whose tensors were renamed.
    """
    done = []
    for name, module in model.named_modules():
        upgrade = getattr(module, "upgrade_legacy_tensors", None)
        if callable(upgrade) and upgrade(f"{name}." if name else "", tensors):
            done.append(name or type(module).__name__)
    return done


def apply_state(
    model: nn.Module,
    tensors: Mapping[str, torch.Tensor],
    *,
    source: str,
    refuse: Collection[str] = PROBLEMS,
    within: str = "",
    unexpected: Sequence[str] = (),
    ignored: Sequence[str] = (),
    renamed: str = "",
    entry: str = "",
) -> LoadReport:
    """Copy ``tensors`` (already named as in ``model``) into ``model``; tensors of another shape are skipped.

    Args:
        model: destination (DDP wrappers are unwrapped).
        tensors: source tensors by model name.
        source: the file, for messages.
        refuse: which of :data:`PROBLEMS` (``missing``, ``unexpected``, ``mismatched``)
            raise instead of being reported; all of them is ``strict``.
        within: only model tensors under this name prefix count as missing
            (``"backbone."`` when loading a backbone alone).
        unexpected: further file names with no place in the model (reported as unexpected).
        ignored, renamed, entry: recorded in the report (see :class:`LoadReport`).

    Returns:
        The :class:`LoadReport`; nothing is copied when it raises.

    Raises:
        CheckpointError: naming ``source`` and the first few tensors (and how many)
            when a problem in ``refuse`` occurs, or when no tensor but scalars fits
            (a file of another model), whatever ``refuse`` says.
    """
    from .distributed import unwrap_model  # local: distributed imports nothing from here

    model = unwrap_model(model)
    tensors = dict(tensors)
    upgraded = upgrade_legacy_names(model, tensors)
    if upgraded:
        note = f"an older layout of {', '.join(upgraded)}"
        renamed = f"{renamed}, {note}" if renamed else note
    own = model.state_dict()
    candidates = [k for k in own if k.startswith(within)]
    mismatched = sorted(
        (k, tuple(v.shape), tuple(own[k].shape)) for k, v in tensors.items() if k in own and tuple(v.shape) != tuple(own[k].shape)
    )
    skipped = {k for k, _, _ in mismatched}
    report = LoadReport(
        loaded=sorted(k for k in tensors if k in own and k not in skipped),
        missing=sorted(set(candidates) - tensors.keys()),
        unexpected=sorted([k for k in tensors if k not in own] + list(unexpected)),
        mismatched=mismatched,
        ignored=sorted(ignored),
        total=len(candidates),
        source=source,
        renamed=renamed,
        entry=entry,
    )
    # Scalars (BatchNorm's step counters) fit any scalar, so loading only them is loading nothing.
    if candidates and not any(tensors[k].dim() for k in report.loaded):
        file_names = sorted([*tensors, *unexpected])
        shapes = "; " + "; ".join(report.problems({"mismatched"})) if mismatched else ""
        raise CheckpointError(
            f"{source}: no tensor of the file fits the model (a file of another model?): the file has "
            f"{len(file_names)} ({_first(file_names, 3)}), the model {len(candidates)} ({_first(candidates, 3)}){shapes}"
        )
    problems = report.problems(refuse)
    if problems:
        raise CheckpointError(f"{source}: " + "; ".join(problems))
    model.load_state_dict({k: tensors[k] for k in report.loaded}, strict=False)
    return report


def load_state_into(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    strict: bool = True,
    prefix_filter: str | None = None,
    target_prefix: str | None = None,
    source: str = "checkpoint",
) -> LoadReport:
    """Copy ``state_dict`` into ``model`` by name: a bicsnet checkpoint into its own model.

    Args:
        model: destination (DDP wrappers are unwrapped).
        state_dict: source tensors, e.g. from :func:`load_model`.
        strict: refuse any missing, unexpected or shape-mismatched tensor;
            otherwise they are skipped and reported.
        prefix_filter: keep only source keys starting with this prefix (e.g.
            ``"backbone."``); only model keys under ``target_prefix`` then count as missing.
        target_prefix: replacement for ``prefix_filter`` in the model's names
            (defaults to ``prefix_filter``; ``""`` loads into ``model.backbone``
            itself).
        source: name of the file, for error messages.

    Returns:
        A :class:`LoadReport`.

    Raises:
        CheckpointError: (``strict``) a missing, unexpected or mismatched tensor;
            no tensor fits at all; nothing under ``prefix_filter``.

    Weights of other origins (``.pth`` files, wrapper prefixes): :func:`bicsnet.weights.load_weights`.
    """
    if prefix_filter:
        dst = prefix_filter if target_prefix is None else target_prefix
        mapped = {dst + k[len(prefix_filter) :]: v for k, v in state_dict.items() if k.startswith(prefix_filter)}
        if not mapped:
            raise CheckpointError(f"{source}: no tensors under '{prefix_filter}'")
    else:
        dst = ""
        mapped = dict(state_dict)
    renamed = f"'{prefix_filter}' -> '{dst}'" if prefix_filter and dst != prefix_filter else ""
    return apply_state(model, mapped, source=source, refuse=PROBLEMS if strict else (), within=dst, renamed=renamed)


_PLAIN = (bool, int, float, str, type(None), torch.Tensor, torch.dtype, torch.device)


def _check_plain(obj: Any, where: str = "state") -> None:
    """Refuse anything ``torch.load(weights_only=True)`` would refuse."""
    if isinstance(obj, _PLAIN):
        return
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"{where}: key {key!r} is a {type(key).__name__}, not str/int")
            _check_plain(value, f"{where}[{key!r}]")
        return
    if isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            _check_plain(value, f"{where}[{i}]")
        return
    raise TypeError(f"{where} is a {type(obj).__name__}; training state must hold only tensors and plain data")


def save_training_state(path: str | os.PathLike, state: Mapping[str, Any]) -> None:
    """Atomically ``torch.save`` a training state made of tensors and plain containers."""
    _check_plain(dict(state))
    atomic_save(path, lambda tmp: torch.save(dict(state), tmp))


def safe_torch_load(path: str | os.PathLike, *, what: str = "training state", refused_hint: str = "not a bicsnet training state",
                    mmap: bool = False) -> Any:  # fmt: skip
    """``torch.load(path, map_location="cpu", weights_only=True)``: tensors and plain data only, never pickled code.

    Args:
        path: a ``torch.save`` file.
        what: what the file should be, for messages (``"training state"``, ``"weights file"``).
        refused_hint: said when the file holds other Python objects.
        mmap: memory-map the tensors (zip format only).

    Raises:
        CheckpointError: naming the file, if it is missing, truncated or
            corrupt, or holds Python objects ``weights_only`` refuses.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: {what}{'' if what.endswith('file') else ' file'} not found")
    try:
        if mmap:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        with open(path, "rb") as f:  # a file object: torch.load reads a path named *.safetensors as safetensors
            return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower() or "weights_only" in str(exc).lower():
            raise CheckpointError(
                f"{path}: refused: it contains Python objects other than tensors and plain data "
                f"(unsafe to unpickle; {refused_hint})"
            ) from None
        raise CheckpointError(f"{path}: corrupt {what}: {str(exc).splitlines()[0]}") from None
    except Exception as exc:  # unpickling damaged bytes can raise almost any exception type
        first = str(exc).splitlines()[0].split(". ")[0] if str(exc) else ""
        if len(first) < 20:  # e.g. a bare KeyError's key: the type says more
            first = f"{type(exc).__name__} {first}".strip()
        raise CheckpointError(f"{path}: unreadable {what} (truncated or corrupt?): {first}") from None


def load_training_state(path: str | os.PathLike, mmap: bool = False) -> dict[str, Any]:
    """Load a training state on CPU with ``weights_only=True`` (never runs pickled code).

    Raises :class:`CheckpointError` naming the file if it is missing,
    truncated, or holds anything but tensors and plain data.
    """
    path = Path(path)
    state = safe_torch_load(path, mmap=mmap)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: training state is a {type(state).__name__}, expected a dict")
    return state


@dataclass
class CheckpointSet:
    """One complete checkpoint: weights, training state and (optional) EMA of one step."""

    step: int
    save_id: str
    weights: Path
    state: Path
    ema: Path | None = None

    def files(self) -> list[Path]:
        """Every file of this checkpoint."""
        return [p for p in (self.weights, self.state, self.ema) if p is not None]


class RunCheckpointer:
    """Crash-safe ``last`` / ``prev`` checkpoints in ``OUT/checkpoints``.

    :meth:`save` writes the new files under temporary names (each one
    atomically), deletes everything but the current newest complete
    checkpoint, renames that one to ``prev.*`` and the new one to ``last.*``.
    :meth:`latest` finds the newest complete checkpoint by matching save ids,
    whatever names its files have at that moment.
    """

    _ROLE_NAMES = {"weights": "{}.safetensors", "ema": "{}_ema.safetensors", "state": "{}.state.pt"}

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        #: Files skipped by the last scan, with the reason (for warnings).
        self.problems: list[str] = []
        # Checkpoint info already read, by file identity (device, inode, size, mtime): a
        # training state is a full torch.save file, and scan() runs on every save; renames
        # (incoming -> last -> prev) keep the identity, so each file is read once.
        self._info_cache: dict[tuple[int, int, int, int], tuple[str | None, dict[str, Any] | None]] = {}

    def path(self, name: str, role: str) -> Path:
        """Path of a role (``weights``, ``ema``, ``state``) under a base name (``last``, ``prev``)."""
        return self.directory / self._ROLE_NAMES[role].format(name)

    def _candidates(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        # Names starting with "." are atomic_save's in-flight temporary files.
        return sorted(
            p
            for p in self.directory.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.name.endswith((".safetensors", ".state.pt"))
        )

    def scan(self) -> list[CheckpointSet]:
        """All complete checkpoints in the directory, newest first."""
        self.problems = []
        parts: dict[str, dict[str, Any]] = {}
        seen: dict[tuple[int, int, int, int], tuple[str | None, dict[str, Any] | None]] = {}
        for p in self._candidates():
            try:
                st = p.stat()
                ident = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
                cached = self._info_cache.get(ident)
                if cached is not None:
                    role, info = cached
                elif p.name.endswith(".state.pt"):
                    info = load_training_state(p, mmap=True).get("checkpoint")
                    role = "state"
                else:
                    info = _read_checkpoint_info(p)
                    role = info.get("role") if info else None
            except FileNotFoundError:
                continue  # removed since the directory was listed
            except (CheckpointError, json.JSONDecodeError) as exc:
                self.problems.append(str(exc) if str(exc).startswith(str(p)) else f"{p}: {exc}")
                continue
            seen[ident] = (role, info)
            if not info or role not in self._ROLE_NAMES or "save_id" not in info:
                continue  # e.g. a model.safetensors copied here: not part of a checkpoint
            entry = parts.setdefault(str(info["save_id"]), {"step": int(info["step"])})
            entry[role] = p
            if role == "state":
                entry["has_ema"] = bool(info.get("has_ema"))
        self._info_cache = seen  # only files still there
        sets = [
            CheckpointSet(e["step"], sid, e["weights"], e["state"], e.get("ema"))
            for sid, e in parts.items()
            if "weights" in e and "state" in e and (not e["has_ema"] or "ema" in e)
        ]
        sets.sort(key=lambda s: (s.step, s.state.stat().st_mtime_ns), reverse=True)
        return sets

    def latest(self) -> CheckpointSet | None:
        """The newest complete checkpoint, or ``None`` if there is none."""
        sets = self.scan()
        return sets[0] if sets else None

    def save(
        self,
        step: int,
        model_state: nn.Module | Mapping[str, torch.Tensor],
        meta: Mapping[str, Any],
        training_state: Mapping[str, Any],
        ema_state: nn.Module | Mapping[str, torch.Tensor] | None = None,
    ) -> CheckpointSet:
        """Write a checkpoint for ``step`` and make it ``last``; the old ``last`` becomes ``prev``."""
        save_id = f"{step}-{uuid.uuid4().hex[:12]}"
        self.directory.mkdir(parents=True, exist_ok=True)
        incoming = f"incoming-{save_id}"
        new = CheckpointSet(step, save_id, self.path(incoming, "weights"), self.path(incoming, "state"))
        save_model(new.weights, model_state, meta, checkpoint_info={"step": step, "save_id": save_id, "role": "weights"})
        if ema_state is not None:
            new.ema = self.path(incoming, "ema")
            save_model(new.ema, ema_state, meta, checkpoint_info={"step": step, "save_id": save_id, "role": "ema"})
        state = dict(training_state)
        state["checkpoint"] = {"step": step, "save_id": save_id, "has_ema": ema_state is not None}
        save_training_state(new.state, state)

        current = next((s for s in self.scan() if s.save_id != save_id), None)
        keep = set(new.files()) | set(current.files() if current else [])
        for p in self._candidates():
            # Only names this class creates: anything else in the folder is the user's.
            if p not in keep and p.name.startswith(("last", "prev", "incoming-")):
                p.unlink(missing_ok=True)
        if current is not None:
            self._move(current, "prev")
        return self._move(new, "last")

    def _move(self, ckpt: CheckpointSet, name: str) -> CheckpointSet:
        moved = CheckpointSet(ckpt.step, ckpt.save_id, self.path(name, "weights"), self.path(name, "state"))
        if ckpt.ema is not None:
            moved.ema = self.path(name, "ema")
        for src, dst in zip(ckpt.files(), moved.files()):
            if src != dst:
                os.replace(src, dst)
        _fsync_dir(self.directory)
        return moved


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
