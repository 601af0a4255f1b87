"""oneDNN paths for CPU: convolution + residual add + activation as one call (``bicsnet.deploy``), and max-pooling.

Eager PyTorch runs ``relu(conv(x) + other)`` as three operators, each a pass
over memory and a dispatch, and re-lays out the weight of every convolution
on every call. oneDNN (the library behind PyTorch's CPU convolutions) applies
the add and the activation as post-ops of the convolution and accepts a weight
laid out once ahead of time: that is what ``torch.compile`` with frozen
weights emits on CPU (``torch.ops.mkldnn._convolution_pointwise``, with
weights from ``torch.ops.mkldnn._reorder_convolution_weight``). This module
calls the same operators from eager code, so BiCSNet's many narrow
convolutions on small maps (Section III-D, Table I) lose their per-operator
overhead without compiling.

The oneDNN path is taken only where it computes the same thing the plain one
does: float32 CPU tensors, no autograd, and not while tracing, scripting,
compiling or exporting (``torch.export``, ONNX, OpenVINO see the plain
operators). Everywhere else :class:`FusedConv2d` runs ``F.conv2d`` + add +
activation, so deployed models export and run on CUDA unchanged.

:class:`OneDNNMaxPool2d` is ``nn.MaxPool2d`` for training and inference alike:
PyTorch's own kernel for NCHW (contiguous) CPU tensors is a scalar loop, 4-12
times slower than oneDNN's pooling on the ResNet stem's 64-channel maps
(``benchmarks/deploy.md``), so on such tensors it runs oneDNN's, forward and
backward; elsewhere (channels-last, CUDA, tracing) the plain operator.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "InferenceOnly", "FusedConv2d", "OneDNNMaxPool2d", "onednn_available", "use_onednn", "use_onednn_pool",
    "ACTIVATION_NAMES",
]

#: Activation modules a fused convolution can apply, by oneDNN post-op name.
ACTIVATION_NAMES: dict[type[nn.Module], str] = {nn.ReLU: "relu", nn.SiLU: "swish"}


def onednn_available() -> bool:
    """Whether this PyTorch build has oneDNN's fused convolution operators (CPU builds on x86 and ARM do)."""
    mkldnn = getattr(torch.ops, "mkldnn", None)
    try:
        return (
            torch.backends.mkldnn.is_available()
            and mkldnn is not None
            and hasattr(mkldnn, "_convolution_pointwise")
            and hasattr(mkldnn, "_reorder_convolution_weight")
        )
    except (AttributeError, RuntimeError):  # pragma: no cover - a build without the mkldnn namespace
        return False


_AVAILABLE = onednn_available()
_POOL_AVAILABLE = _AVAILABLE and hasattr(torch, "mkldnn_max_pool2d")


def _tracing() -> bool:
    if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling():
        return True
    exporting = getattr(torch.compiler, "is_exporting", None)
    return bool(exporting is not None and exporting()) or torch.onnx.is_in_onnx_export()


def use_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :class:`FusedConv2d` takes the oneDNN path for input ``x`` and ``weight``.

    True for plain float32 CPU tensors without autograd (no grad mode, or a
    weight and input that do not require grad), with oneDNN enabled, outside
    tracing / scripting / compiling / exporting. Tensor subclasses (fake or
    functional tensors of a tracer) always take the plain path.
    """
    return (
        _AVAILABLE
        and type(x) is torch.Tensor
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.dim() == 4
        and torch.backends.mkldnn.enabled
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        and not _tracing()
    )


#: Input shapes a convolution keeps laid-out weights for (beyond: least recently used dropped).
_MAX_LAYOUTS = 16


class _Stored:
    """Marker: use the activation the module was built with."""


_STORED = _Stored()


class InferenceOnly(nn.Module):
    """Base of the modules :func:`bicsnet.deploy` builds: ``.train()`` raises, ``.eval()`` works.

    A deployed copy has no BatchNorm left and keeps its weights as buffers, so an
    optimiser over its ``parameters()`` would silently leave most of it untouched.
    ``model.train()`` on a deployed copy therefore fails loudly instead.

    Raises:
        RuntimeError: from ``train(True)``.
    """

    def train(self, mode: bool = True) -> "InferenceOnly":
        if mode:
            # nn.Module.train() has already switched the modules before this one: say how to undo it.
            raise RuntimeError(
                "this model is a copy made by bicsnet.deploy(), for inference only (BatchNorm folded, weights "
                f"stored as buffers; its {type(self).__name__} refused train()): train the original model and "
                "deploy it again; .eval() puts this copy back in inference mode"
            )
        return super().train(False)


class FusedConv2d(InferenceOnly):
    """``act(conv2d(x, W) + b + other)``: a convolution with an optional residual add and activation.

    Shapes as :class:`torch.nn.Conv2d` (``(N, C_in, H, W)`` -> ``(N, C_out,
    H', W')``); ``other`` is ``None`` or of the output's shape. ``act`` is
    ``"relu"``, ``"swish"`` (SiLU) or ``None``. ``forward(x, other, bias)``
    takes an optional ``bias`` replacing the stored one for this call (a
    per-call vector of shape ``(C_out,)``; :class:`bicsnet.reparam.DeployedFusion`
    passes the global context of a batch-1 image this way) and an optional
    ``act`` replacing the stored activation for this call.

    On float32 CPU inference the whole expression is one oneDNN operator
    with a weight laid out once (see the module docstring); elsewhere it is
    ``F.conv2d``, then the add and the activation. Both give the same values
    to float rounding (tested in ``tests/test_deploy.py``). The weight and bias
    are buffers: a deployed model is for inference.
    """

    weight: torch.Tensor
    bias: torch.Tensor | None

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        *,
        stride: tuple[int, int] = (1, 1),
        padding: tuple[int, int] = (0, 0),
        dilation: tuple[int, int] = (1, 1),
        groups: int = 1,
        act: str | None = None,
    ) -> None:
        super().__init__()
        if act not in (None, "relu", "swish"):
            raise ValueError(f"act must be None, 'relu' or 'swish', got {act!r}")
        self.register_buffer("weight", weight.detach().clone())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.stride, self.padding, self.dilation = list(stride), list(padding), list(dilation)
        self.groups = groups
        self.act = act
        #: False: always the plain operators (``bicsnet.deploy(..., fuse=False)``).
        self.onednn = True
        self.in_channels = weight.shape[1] * groups
        self.out_channels = weight.shape[0]
        # Laid-out weights by input shape: oneDNN picks the layout for one input
        # shape, and a layout made for another shape is re-laid out on every call
        # (a RetinaNet head runs one convolution on five levels).
        self._packed: dict[tuple[int, ...], torch.Tensor] = {}
        self._packed_key: tuple[Any, ...] | None = None

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, act: nn.Module | None = None) -> "FusedConv2d":
        """From an ``nn.Conv2d`` (zero padding, numeric) and an activation module (ReLU / SiLU) or None.

        Raises:
            ValueError: padding mode other than zeros, string padding, or an activation without a post-op.
        """
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("FusedConv2d needs numeric zero padding")
        name = None if act is None else ACTIVATION_NAMES.get(type(act))
        if act is not None and name is None:
            raise ValueError(f"no oneDNN post-op for {type(act).__name__}")
        return cls(
            conv.weight, conv.bias, stride=conv.stride, padding=conv.padding, dilation=conv.dilation,  # type: ignore[arg-type]
            groups=conv.groups, act=name,
        )  # fmt: skip

    def __getstate__(self) -> dict[str, Any]:
        # The laid-out weight is a cache (an opaque oneDNN tensor): never copied or pickled.
        state = self.__dict__.copy()
        state["_packed"], state["_packed_key"] = {}, None
        return state

    def _onednn_weight(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        try:
            version = w._version  # changes when the weight is edited in place
        except RuntimeError:  # an inference tensor (deployed under inference_mode): cannot be edited in place
            version = None
        key = (w.data_ptr(), version, tuple(w.shape))
        if self._packed_key != key:
            self._packed, self._packed_key = {}, key
        shape = tuple(x.shape)
        packed = self._packed.pop(shape, None)
        if packed is None:
            packed = torch.ops.mkldnn._reorder_convolution_weight(
                w, self.padding, self.stride, self.dilation, self.groups, list(shape)
            )
            if len(self._packed) >= _MAX_LAYOUTS:  # drop the least recently used shape
                self._packed.pop(next(iter(self._packed)))
        self._packed[shape] = packed  # (re)inserted last: dicts keep insertion order
        return packed

    def forward(
        self,
        x: torch.Tensor,
        other: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
        act: str | None | _Stored = _STORED,
    ) -> torch.Tensor:
        b = self.bias if bias is None else bias
        act_name = self.act if isinstance(act, _Stored) else act
        if self.onednn and use_onednn(x, self.weight) and (other is None or (type(other) is torch.Tensor and other.shape[0] == x.shape[0])):
            w = self._onednn_weight(x)
            args = (self.padding, self.stride, self.dilation, self.groups)
            if other is None:
                return torch.ops.mkldnn._convolution_pointwise(x, w, b, *args, act_name or "none", [], "")
            # oneDNN's binary post-op chains only ReLU after the add; SiLU runs in place after it.
            post = act_name if act_name == "relu" else None
            y = torch.ops.mkldnn._convolution_pointwise.binary(x, other, w, b, *args, "add", None, post, [], "")
            return F.silu(y, inplace=True) if act_name == "swish" else y
        y = F.conv2d(x, self.weight, b, self.stride, self.padding, self.dilation, self.groups)
        if other is not None:
            y = y + other
        if act_name == "relu":
            y = F.relu(y)
        elif act_name == "swish":
            y = F.silu(y)
        return y

    def extra_repr(self) -> str:
        k = tuple(self.weight.shape[2:])
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={k}, stride={tuple(self.stride)}, "
            f"padding={tuple(self.padding)}, groups={self.groups}, act={self.act}"
        )


def use_onednn_pool(x: torch.Tensor) -> bool:
    """Whether :class:`OneDNNMaxPool2d` takes the oneDNN path for input ``x``.

    True for plain, contiguous (NCHW) float32 or bfloat16 CPU tensors of 4
    dimensions with oneDNN enabled, outside tracing / scripting / compiling /
    exporting, with or without autograd. Channels-last tensors take PyTorch's
    own kernel, which is vectorised for that layout.
    """
    return (
        _POOL_AVAILABLE
        and type(x) is torch.Tensor
        and x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.bfloat16)
        and x.dim() == 4
        and x.is_contiguous()
        and torch.backends.mkldnn.enabled
        and not _tracing()
    )


class OneDNNMaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` (no dilation, no indices) that runs oneDNN's pooling on NCHW CPU tensors.

    Shapes, padding and ``ceil_mode`` as :class:`torch.nn.MaxPool2d`;
    ``(N, C, H, W)`` -> ``(N, C, H', W')``. Where :func:`use_onednn_pool` holds,
    the input goes to oneDNN's layout, through ``torch.mkldnn_max_pool2d`` (whose
    backward routes each gradient to the same input position as PyTorch's:
    the first maximum of the window in row-major order) and back; elsewhere
    ``F.max_pool2d``. Both give identical outputs; gradients are identical up
    to the order in which overlapping windows' contributions are summed
    (tested in ``tests/test_deploy.py``). It takes no ``dilation`` or
    ``return_indices``: bicsnet's pools use neither.
    """

    def __init__(self, kernel_size: Any, stride: Any = None, padding: Any = 0, ceil_mode: bool = False) -> None:
        super().__init__(kernel_size, stride, padding, dilation=1, return_indices=False, ceil_mode=ceil_mode)

    @staticmethod
    def _pair(v: Any) -> list[int]:
        return [int(v), int(v)] if isinstance(v, int) else [int(i) for i in v]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not use_onednn_pool(x):
            return super().forward(x)
        stride = self.stride if self.stride is not None else self.kernel_size
        y = torch.mkldnn_max_pool2d(
            x.to_mkldnn(), self._pair(self.kernel_size), self._pair(stride), self._pair(self.padding),
            [1, 1], self.ceil_mode,
        )  # fmt: skip
        return y.to_dense()
