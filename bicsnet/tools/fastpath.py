"""Inference fast path: BN folding, channels_last, ``torch.compile``, autocast.

Every transform returns a *new* model (the input is left untouched) and only
applies to inference (eval mode):

* :func:`fold_batchnorm` folds every eval-mode BatchNorm that directly follows
  a convolution into the convolution's weight and bias, by building a folded
  copy and replacing modules (``torch.nn.utils.fusion.fuse_conv_bn_eval``):
  in our :class:`~bicsnet.arch.layers.ConvNormAct` (``conv, norm[, act]``) and in
  any ``nn.Sequential`` where a ``Conv2d`` is immediately followed by a
  BatchNorm (torchvision's ``Conv2dNormActivation``, DeepLab's ASPP and head,
  ResNet's down-sampling shortcut) the conv is replaced by the folded conv
  (with bias) and the norm by ``Identity`` (positions and classes kept); and
  torchvision's ResNet / ``BasicBlock`` / ``Bottleneck`` and the stem inside
  ``IntermediateLayerGetter`` (``convK`` then ``bnK`` in ``forward``) get
  ``bnK`` replaced by ``Identity``. GroupNorm
  (our detection heads) depends on the activations and is left alone.
* :func:`to_channels_last` converts 4-d parameters and buffers to NHWC;
  inputs should be converted too (:func:`prepare_input`).
* :func:`compile_model` wraps with ``torch.compile`` (inductor with
  ``freezing``: weights become constants, pre-packed for oneDNN on CPU; needs a
  C++ compiler on CPU, and the first call is slow).
* ``bf16`` / ``fp16`` are autocast contexts (:func:`autocast_context`); fp16
  only on CUDA.

:func:`apply_fast_path` applies a list of these by name, as ``bicsnet bench
--fast fold,channels_last,compile`` does.
"""
from __future__ import annotations

import contextlib
import copy
from typing import ContextManager, Iterable, Sequence

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_conv_bn_weights
from torchvision.ops import FrozenBatchNorm2d

from ..errors import ConfigError

__all__ = [
    "FAST_OPTIONS",
    "fold_batchnorm",
    "count_batchnorms",
    "to_channels_last",
    "compile_model",
    "autocast_context",
    "prepare_input",
    "parse_fast",
    "apply_fast_path",
]

#: Names accepted by :func:`apply_fast_path` / ``bench --fast``.
FAST_OPTIONS = ("deploy", "fold", "channels_last", "compile", "bf16", "fp16")

_BN_TYPES = (nn.BatchNorm2d, nn.SyncBatchNorm)


def _is_bn(m: nn.Module) -> bool:
    return isinstance(m, _BN_TYPES + (FrozenBatchNorm2d,))


def _fold(conv: nn.Conv2d, bn: nn.Module) -> nn.Conv2d:
    """A new conv equal to ``bn(conv(x))`` in eval mode."""
    if isinstance(bn, _BN_TYPES):
        if bn.running_mean is None or bn.running_var is None:
            raise ValueError("cannot fold a BatchNorm without running statistics")
        # fuse_conv_bn_eval asserts eval mode on both and deep-copies the conv.
        return fuse_conv_bn_eval(conv.eval(), bn.eval())
    # FrozenBatchNorm2d: same statistics, stored as plain buffers.
    fused = copy.deepcopy(conv)
    fused.weight, fused.bias = fuse_conv_bn_weights(
        conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
    )
    return fused


def _fold_sequential(seq: nn.Sequential) -> None:
    """In ``seq`` (any Sequential subclass), conv -> BN becomes folded conv -> Identity.

    Keeping the positions (and the class, with its own ``forward``, e.g.
    DeepLab's ASPPPooling) means nothing that indexes the container breaks.
    """
    children = list(seq.named_children())
    for (a, conv), (b, bn) in zip(children, children[1:]):
        if isinstance(conv, nn.Conv2d) and _is_bn(bn):
            setattr(seq, a, _fold(conv, bn))
            setattr(seq, b, nn.Identity())


def _torchvision_resnet_types() -> tuple[type, ...]:
    from torchvision.models._utils import IntermediateLayerGetter  # runs its children in order
    from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

    return (ResNet, BasicBlock, Bottleneck, IntermediateLayerGetter)


def _fold_named_pairs(module: nn.Module) -> None:
    """torchvision ResNet pieces: ``convK`` is immediately followed by ``bnK`` in forward."""
    names = dict(module.named_children())
    for name, child in list(names.items()):
        if not (name.startswith("conv") and isinstance(child, nn.Conv2d)):
            continue
        bn_name = "bn" + name[len("conv"):]
        bn = names.get(bn_name)
        if bn is not None and _is_bn(bn):
            setattr(module, name, _fold(child, bn))
            setattr(module, bn_name, nn.Identity())


def _fold_inplace(module: nn.Module) -> None:
    if isinstance(module, _torchvision_resnet_types()):
        _fold_named_pairs(module)
    if isinstance(module, nn.Sequential):
        _fold_sequential(module)
    for child in module.children():
        _fold_inplace(child)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every conv -> BN pair folded into the conv.

    Outputs match the eval-mode original to float rounding (tested to 1e-4).
    The original model is not modified.
    """
    folded = copy.deepcopy(model).eval()
    _fold_inplace(folded)
    return folded.eval()


def count_batchnorms(model: nn.Module) -> int:
    """BatchNorm layers left in ``model`` (0 after folding a pure conv-BN network)."""
    return sum(1 for m in model.modules() if _is_bn(m))


def to_channels_last(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with NHWC parameters (PyTorch keeps NHWC through conv/BN/act)."""
    return copy.deepcopy(model).to(memory_format=torch.channels_last)


def compile_model(model: nn.Module, freezing: bool = True) -> nn.Module:
    """``torch.compile(model)`` (inductor) for inference. Compilation happens on the first call.

    ``freezing`` (inductor's option, scoped to this model) treats the weights as
    constants: conv-BN folding, and on CPU weights pre-packed for oneDNN once
    instead of on every call - most of the gain on CPU. Frozen models must be
    called under ``torch.no_grad()`` / ``torch.inference_mode()``.
    """
    options = {"freezing": True} if freezing else None
    return torch.compile(model, dynamic=False, options=options)  # type: ignore[return-value]


def autocast_context(kind: str | None, device: torch.device | str) -> ContextManager:
    """Autocast for ``bf16``/``fp16`` (``None``: a null context)."""
    if kind is None:
        return contextlib.nullcontext()
    dev = torch.device(device).type
    if kind == "fp16" and dev != "cuda":
        raise ConfigError("fp16 autocast needs CUDA (use bf16 on CPU)")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[kind]
    return torch.autocast(device_type=dev, dtype=dtype)


def prepare_input(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """``x`` in the memory format the fast model expects."""
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def parse_fast(spec: str | Sequence[str] | None) -> list[str]:
    """``"fold,channels_last"`` -> ``["fold", "channels_last"]``; unknown names are a ConfigError."""
    if spec is None:
        return []
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec)]
    items = [s for s in items if s and s != "none"]
    bad = [s for s in items if s not in FAST_OPTIONS]
    if bad:
        raise ConfigError(f"--fast: unknown option(s) {', '.join(bad)}; choose from {', '.join(FAST_OPTIONS)}")
    if "bf16" in items and "fp16" in items:
        raise ConfigError("--fast: choose one of bf16 and fp16")
    return items


def apply_fast_path(
    model: nn.Module, options: Iterable[str], submodules: Sequence[str] | None = None
) -> nn.Module:
    """Apply ``deploy`` / ``fold`` / ``channels_last`` / ``compile`` (in that order) to an eval copy.

    ``deploy`` is :func:`bicsnet.deploy` (exact deploy-time re-parameterisation).

    ``bf16``/``fp16`` are not model transforms: wrap calls in
    :func:`autocast_context`. ``submodules`` names children to compile instead
    of the whole model (a detector's ``backbone`` and ``head``, leaving the
    Python pre/post-processing eager).
    """
    opts = set(options)
    out = model.eval()
    if "deploy" in opts:
        from ..reparam import deploy  # lazily: bicsnet.deploy builds on the model packages

        out = deploy(out)
    if "fold" in opts:
        out = fold_batchnorm(out)
    if "channels_last" in opts:
        out = to_channels_last(out)
    if "compile" in opts:
        if submodules:
            out = copy.deepcopy(out) if out is model else out
            for name in submodules:
                setattr(out, name, compile_model(getattr(out, name)))
        else:
            out = compile_model(out)
    return out

