"""Deploy-time re-parameterization (``bicsnet.deploy``): an inference copy that computes the same function with fewer, larger operators.

:func:`deploy` returns an eval-mode copy of any bicsnet model (backbone,
classifier, segmenter, RetinaNet, Mask R-CNN, lite detector) or torchvision
baseline whose outputs equal the eval-mode original's to float rounding
(tested to 1e-5 relative on every registered model). What it rewrites, and why
each rewrite is exact:

1. **BatchNorm folding** (:func:`bicsnet.tools.fastpath.fold_batchnorm`):
   every eval-mode BN that follows a convolution becomes the convolution's
   weight and bias, in the backbone, the Spatial Fusion Module and the
   detection / segmentation subnets. The detectors' box and class subnets
   (RetinaNet's and the lite ones) share each convolution across levels with
   one BN per level; deploy gives every level its own folded copy
   (:class:`LevelFoldedSubnet`).
2. **Horizontal fusion of 1x1 convolutions reading one feature**
   (:class:`SharedPointwise`, installed with
   :meth:`bicsnet.arch.backbone.BiCSNet.share_pointwise`): every Spatial
   Fusion Module branch squeezes its source with a 1x1 conv + act (Section
   III-C, Fig. 4), and the output blocks' endpoints are 1x1 conv + act too. A
   block output read by k branches (up to four in BiCSNet: main edge,
   Gap-Connection eq. (4), Skip-Connection eq. (5), Long-Range
   Gap-Connection eq. (6)) and an endpoint is read once, by one convolution
   whose output is split: ``act(cat(W_i) x + cat(b_i))`` split by channel is
   ``act(W_i x + b_i)`` for each i.
3. **Global context as a bias** (:class:`DeployedBranch`): a branch ends with
   ``project(gc_post(z))`` where ``gc_post(z) = z + A mean(z) + a`` adds a
   per-image, per-channel constant, and ``project`` is a 1x1 conv + (folded)
   norm. ``W (z + c) + b = W z + (W c + b)``: the add on the full map becomes
   a vector per image, summed over the fusion's branches and added once (at
   batch 1 it is the first convolution's bias: no add at all). For branches
   that do not down-sample, ``gc_pre`` goes the same way: adding a constant
   moves the mean by that constant, and nearest resizing replicates pixels.
4. **Projection before up-sampling**: a 1x1 conv commutes with nearest
   resizing (both act per pixel / select pixels), so an Up-Sampling branch
   (eq. (2)) projects at the source's resolution and resizes the result.
5. **Max-pool chains** (:func:`merge_max_pools`): ``k`` consecutive 3x3
   stride-2 max-pools (padding 1) are one ``(2^(k+1) - 1)`` window with stride
   ``2^k`` and padding ``2^k - 1`` (the End Down-Sampling Part's operator D,
   eq. (3), and long Gap-Connections).

6. **Heads without the stacked pyramid** (Section IV-B, IV-C): both heads
   up-sample P4..P7 to P3's size and average the five maps. The classifier
   then takes a global mean, which is the average of the levels' own means
   when nearest resizing repeats pixels equally often
   (:class:`DeployedClassificationHead`); the segmenter sums the maps in
   place and folds the 1/5 into its first (linear) convolution
   (:class:`DeployedSegmentationHead`).

7. **Fused convolutions** (:func:`fuse_convolutions`,
   :class:`~bicsnet.fused_ops.FusedConv2d`): every convolution becomes one
   oneDNN call with its bias, residual add and activation as post-ops and
   its weight laid out once (what ``torch.compile``'s frozen CPU graphs call),
   in residual blocks (:class:`FusedResidual`, also torchvision's ResNet
   blocks, so baselines get the same), stems, heads, and in each Spatial
   Fusion Module, whose branch projections chain the branch sum and the
   activation (eqs. (1)-(6): ``act(sum_i y_i)``). Only on float32 CPU
   inference outside tracing / exporting; elsewhere the same modules run the
   plain operators (``fuse=False`` keeps them plain everywhere).

8. **Max-pools on oneDNN** (:func:`onednn_max_pools`): every plain
   ``nn.MaxPool2d`` (torchvision baselines' stems) becomes
   :class:`~bicsnet.fused_ops.OneDNNMaxPool2d`, which bicsnet's backbones use
   from the start: equal outputs, 4-12 times faster on NCHW CPU tensors. The
   fused convolutions of rewrite 7 already hand the pools channels-last maps,
   where PyTorch's kernel is fast, so this matters with ``fuse=False`` and
   keeps the two sides of a comparison alike.

Nothing is dropped or approximated: parameters are combined in float64 and
stored as float32. :func:`operator_counts` counts the ATen operators and
convolutions one forward runs, before and after (``benchmarks/deploy.md``).
"""
from __future__ import annotations

import copy
from collections import Counter
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx.experimental.symbolic_shapes import statically_known_true
from torch.utils._python_dispatch import TorchDispatchMode

from .arch.backbone import BiCSNet
from .arch.blocks import BottleneckBlock, ResidualBlock
from .arch.layers import DropPath
from .fused_ops import ACTIVATION_NAMES, FusedConv2d, InferenceOnly, OneDNNMaxPool2d, onednn_available, use_onednn
from .arch.fusion import GlobalContext, ResampleBranch, ResizeTo, SpatialFusionModule, resize_to
from .models.heads import ClassificationHead, SegmentationHead
from .models.detection import LevelNormSubnet
from .tools.fastpath import count_batchnorms, fold_batchnorm

__all__ = [
    "deploy",
    "SharedPointwise",
    "DeployedBranch",
    "DeployedFusion",
    "LevelFoldedSubnet",
    "DeployedClassificationHead",
    "DeployedSegmentationHead",
    "merge_max_pools",
    "onednn_max_pools",
    "operator_counts",
    "FusedResidual",
    "fuse_convolutions",
]


# --------------------------------------------------------------------------- horizontal fusion


def _pointwise(m: nn.Module) -> tuple[nn.Conv2d, nn.Module] | None:
    """``(conv, act)`` of a folded 1x1 stride-1 ConvNormAct (conv, Identity, act), else None."""
    if not isinstance(m, nn.Sequential) or len(m) != 3:
        return None
    conv, norm, act = m
    if not (isinstance(conv, nn.Conv2d) and isinstance(norm, nn.Identity)):
        return None
    if conv.kernel_size != (1, 1) or conv.stride != (1, 1) or conv.groups != 1:
        return None
    return conv, act


class SharedPointwise(nn.Module):
    """Several ``act(1x1 conv(x))`` on one input as one convolution, split by channel.

    ``(N, C_in, H, W)`` -> ``{key: (N, C_key, H, W)}`` for ``output_keys``
    (the backbone's names for what each part feeds, see
    :meth:`bicsnet.arch.backbone.BiCSNet.share_pointwise`). Exact: a
    convolution's output channels are independent of each other.
    """

    def __init__(self, keys: Sequence[str], convs: Sequence[nn.Conv2d], act: nn.Module) -> None:
        super().__init__()
        self.output_keys = list(keys)
        self.sizes = [c.out_channels for c in convs]
        weight = torch.cat([c.weight.detach() for c in convs])
        bias = torch.cat([c.bias.detach() if c.bias is not None else c.weight.new_zeros(c.out_channels) for c in convs])
        self.conv = nn.Conv2d(weight.shape[1], weight.shape[0], 1)
        with torch.no_grad():
            self.conv.weight.copy_(weight)
            self.conv.bias.copy_(bias)
        self.act = act

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = self.act(self.conv(x))
        return dict(zip(self.output_keys, torch.split(y, self.sizes, dim=1)))


def _share_pointwise(backbone: BiCSNet) -> int:
    """Install a :class:`SharedPointwise` per source read by 1x1 squeezes / an endpoint; returns convs removed."""
    readers: dict[str, list[tuple[str, nn.Conv2d, nn.Module]]] = {}
    for spec in backbone.specs:
        if spec.name not in backbone.fusions:
            continue
        fusion = backbone.fusions[spec.name]
        if not isinstance(fusion, SpatialFusionModule):
            continue
        for j, (edge, branch) in enumerate(zip(spec.inputs, fusion.branches)):
            pw = _pointwise(branch.squeeze) if isinstance(branch, ResampleBranch) else None
            if pw is not None:
                readers.setdefault(edge.source, []).append((f"{spec.name}.{j}", *pw))
    for p, block in backbone.output_blocks.items():
        pw = _pointwise(backbone.endpoints[p])
        if pw is not None and block in readers:
            readers[block].append((p, *pw))
    removed = 0
    for source, members in readers.items():
        acts = {type(act) for _, _, act in members}
        if len(acts) != 1:  # squeeze and endpoint activations differ: keep them apart
            continue
        keys, convs, act_list = zip(*members)
        backbone.share_pointwise(source, SharedPointwise(keys, convs, copy.deepcopy(act_list[0])))
        removed += len(members) - 1
        fusions = backbone.fusions
        for key in keys:
            if key.startswith("p"):
                backbone.endpoints[key] = nn.Identity()  # computed by the shared module
            else:
                block, j = key.rsplit(".", 1)
                fusions[block].branches[int(j)].squeeze = nn.Identity()
    return removed


# --------------------------------------------------------------------------- fusion branches


def _gc_params(gc: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(A, a)`` of a :class:`GlobalContext` (``x + A mean(x) + a``), None for an identity step."""
    if isinstance(gc, GlobalContext):
        return gc.conv.weight.detach().flatten(1).double(), gc.conv.bias.detach().double()
    if isinstance(gc, nn.Identity):
        return None
    raise TypeError(f"unexpected global-context step {type(gc).__name__}")


def _exact_replication(src: torch.Tensor, size: tuple[int, int]) -> bool:
    """Whether nearest resizing ``src`` to ``size`` repeats every pixel equally often (mean unchanged)."""
    h, w = src.shape[-2:]
    return bool(statically_known_true(size[0] % h == 0) and statically_known_true(size[1] % w == 0))


class DeployedBranch(InferenceOnly):
    """One Spatial Fusion Module branch, split into a map and a per-image vector.

    ``forward(x, size)`` returns ``(y, v)`` with ``y + v[:, :, None, None]``
    equal to the original branch's output, ``y`` of shape ``(N, C_target, *size)``
    (without the projection's bias) and ``v`` of shape ``(N, C_target)`` (or
    None). ``x`` is the branch's squeezed input when the squeeze was shared
    (:class:`SharedPointwise`), else its source. ``scale`` is the branch's
    fast-normalized fusion weight (lite models), folded into the projection.
    """

    def __init__(self, branch: ResampleBranch, scale: float | None = None) -> None:
        super().__init__()
        self.squeeze = branch.squeeze
        self.down = merge_max_pools(branch.down)
        self.has_down = len(branch.down) > 0
        self.up = isinstance(branch.resize, ResizeTo)
        s = 1.0 if scale is None else float(scale)
        gc_pre, gc_post = _gc_params(branch.gc_pre), _gc_params(branch.gc_post)
        # A down-sampling branch keeps its gc_pre as is: a constant added before
        # a zero-padded 3x3 convolution is not a constant after it (borders).
        self.gc_pre: nn.Module = branch.gc_pre if self.has_down else nn.Identity()
        self.pre = gc_pre if not self.has_down else None
        self.post = gc_post
        proj = branch.project
        weight: torch.Tensor | None = None
        if isinstance(proj, nn.Identity):
            self.bias = None
            self.out_scale = s
        else:
            conv = proj[0]
            if not (isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and isinstance(proj[1], nn.Identity)):
                raise TypeError("deploy expects a folded 1x1 projection (fold_batchnorm first)")
            w = conv.weight.detach().flatten(1).double() * s
            b = (conv.bias.detach().double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)) * s
            weight = w.float().reshape(conv.weight.shape)
            self.register_buffer("bias", b.float())
            self.out_scale = 1.0
        # The projection without its bias (that goes into the per-image vector); a
        # FusedConv2d so DeployedFusion can chain the branch sum and activation into it.
        # The weight is stored once, as proj.weight.
        self.proj = None if weight is None else FusedConv2d(weight, None)
        # Global-context maps as float32 buffers: ctx = G m + g for the mean m
        # of the map the branch projects (derived below per case).
        self._set_context()

    def _set_context(self) -> None:
        """Precompute the constant added before the projection, ``G0 m0 + G1 m1 + g``, projected.

        ``m0`` is the mean of the map gc_pre sees, ``m1`` of the map gc_post
        sees (after the resize; ``m1 = m0`` when nearest resizing repeats every
        pixel equally often). gc_pre adds ``c1 = A1 m0 + a1``, which moves the
        mean gc_post sees to ``m1 + c1``; gc_post adds ``c2 = A2 (m1 + c1) + a2``.
        """
        pre, post = self.pre, self.post
        self.has_context = pre is not None or post is not None
        if not self.has_context:
            return
        mid = self.squeeze_width()
        zero = torch.zeros(mid, mid, dtype=torch.float64)
        G0, G1, g = zero.clone(), zero.clone(), torch.zeros(mid, dtype=torch.float64)
        if pre is not None:
            A1, a1 = pre
            G0, g = A1.clone(), a1.clone()
        if post is not None:
            A2, a2 = post
            G1 = A2.clone()
            G0, g = G0 + A2 @ G0, g + A2 @ g + a2
        if self.proj is not None:
            W = self.proj.weight.double().flatten(1)
            G0, G1, g = W @ G0, W @ G1, W @ g + self.bias.double()
        # Only an up-sampling branch can see two different means (uneven replication):
        # it keeps both maps; every other branch one combined map.
        # Stored transposed, (C_in, C_out), for one addmm per image batch.
        if self.up:
            self.register_buffer("ctx_pre", G0.t().contiguous().float())
            self.register_buffer("ctx_post", G1.t().contiguous().float())
        else:
            self.register_buffer("ctx_weight", (G0 + G1).t().contiguous().float())
        self.register_buffer("ctx_bias", g.float())

    def squeeze_width(self) -> int:
        """Channels of the map the global context acts on (the squeezed width)."""
        for p in (self.pre, self.post):
            if p is not None:
                return p[0].shape[0]
        if self.proj is not None:
            return self.proj.weight.shape[1]
        raise ValueError("a branch without projection or global context has no width to infer")

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        z, v = self.prepare(x, size)
        y = z if self.proj is None else self.proj(z)
        if self.out_scale != 1.0:
            y = y * self.out_scale
            v = None if v is None else v * self.out_scale
        if self.up:
            y = resize_to(y, size)  # after the 1x1 projection: fewer pixels to project
        return y, v

    def prepare(self, x: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(z, v)``: the map the projection reads (squeezed, down-sampled) and the per-image vector.

        The branch's output is ``proj(z) + v`` (then resized for an Up-Sampling
        branch, scaled for an unprojected one); ``v`` is ``(N, C_target)`` or None.
        """
        z = self.down(self.gc_pre(self.squeeze(x)))
        # The mean of the map gc_post sees (after the resize): equal to z's when
        # nearest resizing repeats every pixel equally often.
        if self.has_context:
            m0 = z.mean((2, 3))
            if self.up:
                m1 = m0 if _exact_replication(z, size) else resize_to(z, size).mean((2, 3))
                v: torch.Tensor | None = torch.addmm(self.ctx_bias, m0, self.ctx_pre).addmm_(m1, self.ctx_post)
            else:
                v = torch.addmm(self.ctx_bias, m0, self.ctx_weight)
        else:
            v = None if self.bias is None else self.bias.expand(z.shape[0], -1)
        return z, v


class DeployedFusion(InferenceOnly):
    """A Spatial Fusion Module of :class:`DeployedBranch` es: maps summed, vectors summed and added once.

    Same inputs and output as :class:`~bicsnet.arch.fusion.SpatialFusionModule`
    (eqs. (1)-(6): element-wise sum, then the activation); branches of other
    kinds (Table X's "- SFM" ablation) run as they are, scaled by their
    fast-normalized weight if any.
    """

    def __init__(self, fusion: SpatialFusionModule) -> None:
        super().__init__()
        scales: list[float | None] = [None] * len(fusion.branches)
        if fusion.fusion == "fast_normalized":
            w = F.relu(fusion.weights.detach().double())
            scales = [float(x) for x in w / (w.sum() + 1e-4)]
        self.branches = nn.ModuleList(
            DeployedBranch(b, s) if isinstance(b, ResampleBranch) else _Scaled(b, s)
            for b, s in zip(fusion.branches, scales)
        )
        self.act = fusion.act
        self.act_name = ACTIVATION_NAMES.get(type(fusion.act))
        # Branches whose projection runs at the target size (not Up-Sampling, projected):
        # their projections can take the running sum as a oneDNN post-op.
        self.chained = [
            i for i, b in enumerate(self.branches) if isinstance(b, DeployedBranch) and b.proj is not None and not b.up
        ]

    def forward(self, inputs: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        if self.chained and self.act_name is not None and use_onednn(inputs[0], self.branches[self.chained[0]].proj.weight):
            return self._forward_chained(inputs, size)
        out: torch.Tensor | None = None
        vec: torch.Tensor | None = None
        for b, x in zip(self.branches, inputs):
            y, v = b(x, size)
            if v is not None:
                vec = v if vec is None else vec + v
            out = y if out is None else out + y
        assert out is not None, "a fusion needs at least one input"
        if vec is not None:
            out = out + vec[:, :, None, None]
        elif any(out is x for x in inputs):  # an identity branch: the in-place act must not touch the source
            out = out.clone()
        return self.act(out)

    def _forward_chained(self, inputs: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """The same sum with every add and the activation as post-ops of the projections (oneDNN, CPU).

        ``act(sum_i y_i + v)``: the other branches are summed first; then each
        chained projection adds the running sum, and the last one also adds
        ``v`` through its bias (batch 1) and applies the activation.
        """
        acc: torch.Tensor | None = None
        vec: torch.Tensor | None = None
        maps: list[tuple[FusedConv2d, torch.Tensor]] = []
        for i, (b, x) in enumerate(zip(self.branches, inputs)):
            if i in self.chained:
                z, v = b.prepare(x, size)
                maps.append((b.proj, z))
            else:
                y, v = b(x, size)
                acc = y if acc is None else acc + y
            if v is not None:
                vec = v if vec is None else vec + v
        one = vec is None or vec.shape[0] == 1
        for k, (proj, z) in enumerate(maps):
            last = k == len(maps) - 1
            if last and one:
                acc = proj(z, acc, None if vec is None else vec[0], act=self.act_name)
            else:
                acc = proj(z, acc)
        assert acc is not None
        if not one:
            return self.act(acc + vec[:, :, None, None])  # type: ignore[index]
        return acc


class _Scaled(nn.Module):
    """A branch run as it is, times its fast-normalized weight; ``(y, None)``."""

    def __init__(self, branch: nn.Module, scale: float | None) -> None:
        super().__init__()
        self.branch = branch
        if hasattr(branch, "down"):
            branch.down = merge_max_pools(branch.down)
        self.scale = scale

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, None]:
        y = self.branch(x, size)
        return (y if self.scale is None else y * self.scale), None


# --------------------------------------------------------------------------- max-pool chains


def _is_half_pool(m: nn.Module) -> bool:
    return (
        isinstance(m, nn.MaxPool2d)
        and m.kernel_size in (3, (3, 3)) and m.stride in (2, (2, 2)) and m.padding in (1, (1, 1))
        and m.dilation in (1, (1, 1)) and not m.ceil_mode and not m.return_indices
    )  # fmt: skip


def onednn_max_pools(model: nn.Module) -> int:
    """Replace every plain ``nn.MaxPool2d`` in ``model`` (in place) by :class:`~bicsnet.fused_ops.OneDNNMaxPool2d`.

    Rewrite 8: the same pooling (equal outputs), on oneDNN for NCHW CPU tensors,
    where PyTorch's own kernel is a scalar loop (a ResNet stem's max-pool at 640
    px: about 28 ms against 7 ms on two cores, ``benchmarks/deploy.md``).
    bicsnet's backbones are built with it; this gives torchvision's baselines
    (their stems' max-pools) the same. After rewrite 7 the pools read the fused
    convolutions' channels-last outputs and take PyTorch's kernel either way.
    Pools with dilation or indices are kept.
    Returns how many were replaced.
    """
    n = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.MaxPool2d and child.dilation in (1, (1, 1)) and not child.return_indices:
                setattr(parent, name, OneDNNMaxPool2d(child.kernel_size, child.stride, child.padding, child.ceil_mode))
                n += 1
    return n


def merge_max_pools(seq: nn.Sequential) -> nn.Sequential:
    """``seq`` with each run of k >= 2 max-pools 3x3/2 (padding 1) replaced by one pool.

    The run sees input pixels ``[2^k i - (2^k - 1), 2^k i + (2^k - 1)]`` for
    output ``i``: a window of ``2^(k+1) - 1`` with stride ``2^k`` and padding
    ``2^k - 1``; both give ``ceil(H / 2^k)`` outputs and the padded positions
    never win a max (tested on odd and even sizes). Returns a new Sequential.
    """
    out: list[nn.Module] = []
    run = 0

    def flush() -> None:
        nonlocal run
        if run == 1:
            out.append(OneDNNMaxPool2d(3, 2, 1))
        elif run > 1:
            s = 2**run
            out.append(OneDNNMaxPool2d(2 * s - 1, s, s - 1))
        run = 0

    for m in seq:
        if _is_half_pool(m):
            run += 1
            continue
        flush()
        out.append(m)
    flush()
    return nn.Sequential(*out)


# --------------------------------------------------------------------------- detection subnets


class LevelFoldedSubnet(InferenceOnly):
    """A :class:`~bicsnet.models.detection.LevelNormSubnet` (RetinaNet's dense subnets, the lite
    detectors' separable ones) with its per-level BNs folded into per-level convolutions.

    The subnet shares each convolution across levels and normalises each level
    with its own BN; folding gives every level its own copy of the convolution
    the BN follows (a separable convolution's depthwise half stays shared).
    Each level's layer is ``(conv, identity, act)``, so rewrite 7 fuses the
    activation into it. Same ``forward(x, level)`` and ``forward_pyramid``.
    """

    def __init__(self, subnet: LevelNormSubnet) -> None:
        super().__init__()
        self.predictor = subnet.predictor
        levels = []
        for norms in subnet.norms:
            layers = []
            for conv, norm in zip(subnet.convs, norms):
                folded = fold_batchnorm(nn.Sequential(copy.deepcopy(conv[-1]), norm))[0]
                layers.append(nn.Sequential(*list(conv)[:-1], nn.Sequential(folded, nn.Identity(), subnet.act)))
            levels.append(nn.ModuleList(layers))
        self.levels = nn.ModuleList(levels)

    @property
    def num_levels(self) -> int:
        return len(self.levels)

    def forward(self, x: torch.Tensor, level: int) -> torch.Tensor:
        for layer in self.levels[level]:
            x = layer(x)
        return self.predictor(x)

    forward_pyramid = LevelNormSubnet.forward_pyramid


def _fold_level_subnets(model: nn.Module) -> None:
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, LevelNormSubnet) and all(
                isinstance(n, (nn.BatchNorm2d, nn.SyncBatchNorm)) for norms in child.norms for n in norms
            ):
                setattr(module, name, LevelFoldedSubnet(child))


# --------------------------------------------------------------------------- heads


class DeployedClassificationHead(InferenceOnly):
    """:class:`~bicsnet.models.heads.ClassificationHead` (Section IV-C) from the levels' means.

    ``{p3..p7: (N, C, H_l, W_l)}`` -> logits ``(N, K)``. The mean of a level
    up-sampled to P3's size is the level's own mean when every pixel is
    repeated equally often; otherwise that level is up-sampled as before.
    """

    def __init__(self, head: ClassificationHead) -> None:
        super().__init__()
        self.dropout = head.dropout
        self.fc = head.fc

    def forward(self, features: Any) -> torch.Tensor:
        maps = list(features.values())
        size = (maps[0].shape[-2], maps[0].shape[-1])
        means = [(m if _exact_replication(m, size) else resize_to(m, size)).mean((2, 3)) for m in maps]
        x = means[0]
        for m in means[1:]:
            x = x + m
        return self.fc(self.dropout(x / len(maps)))


class DeployedSegmentationHead(InferenceOnly):
    """:class:`~bicsnet.models.heads.SegmentationHead` (Section IV-B) summing the levels in place.

    ``{p3..p7}`` -> logits ``(N, K, H_3, W_3)``: the levels are up-sampled and
    added into one map (no stacked copy) and the average's ``1 / levels`` is
    folded into the first convolution's weight, which is linear.
    """

    def __init__(self, head: SegmentationHead, levels: int) -> None:
        super().__init__()
        self.convs = copy.deepcopy(head.convs)
        first = self.convs[0][0]
        if not (isinstance(first, nn.Conv2d) and isinstance(self.convs[0][1], nn.Identity)):
            raise TypeError("deploy expects a folded segmentation head (fold_batchnorm first)")
        with torch.no_grad():
            first.weight.mul_(1.0 / levels)
        self.classifier = head.classifier
        self.levels = levels

    def forward(self, features: Any) -> torch.Tensor:
        maps = list(features.values())
        if len(maps) != self.levels:
            raise ValueError(f"expected {self.levels} pyramid levels, got {len(maps)}")
        size = (maps[0].shape[-2], maps[0].shape[-1])
        x = maps[0].clone()  # the sum is accumulated in place: never into the backbone's P3
        for m in maps[1:]:
            x.add_(resize_to(m, size))
        return self.classifier(self.convs(x))


def _deploy_heads(model: nn.Module) -> int:
    """Replace the classification / segmentation heads (after BN folding); returns how many."""
    n = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, ClassificationHead):
                setattr(module, name, DeployedClassificationHead(child))
                n += 1
            elif isinstance(child, SegmentationHead) and _folded_head(child):
                levels = len(getattr(getattr(module, "backbone", None), "levels", [])) or 5
                setattr(module, name, DeployedSegmentationHead(child, levels))
                n += 1
    return n


def _folded_head(head: SegmentationHead) -> bool:
    first = head.convs[0]
    return isinstance(first, nn.Sequential) and isinstance(first[0], nn.Conv2d) and isinstance(first[1], nn.Identity)


# --------------------------------------------------------------------------- fused convolutions


class FusedResidual(InferenceOnly):
    """A residual block as ``last(pre(x), other=shortcut(x))``: the add and activation are the last convolution's post-ops.

    ``(N, C_in, H, W)`` -> ``(N, C_out, H', W')``, equal to the block it
    replaces in eval mode (bicsnet's bottleneck / residual blocks, Section
    III-D, and torchvision's ResNet ``Bottleneck`` / ``BasicBlock``).
    """

    def __init__(self, pre: Sequence[FusedConv2d], last: FusedConv2d, shortcut: nn.Module) -> None:
        super().__init__()
        self.pre = nn.Sequential(*pre)
        self.last = last
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.pre(x), self.shortcut(x))


def _conv_act_of(m: nn.Module) -> tuple[nn.Conv2d, nn.Module | None] | None:
    """``(conv, act)`` of a plain folded conv (+ act) Sequential (ConvNormAct), else None."""
    if type(m).forward is not nn.Sequential.forward or not 2 <= len(m) <= 3:  # type: ignore[arg-type]
        return None
    conv, norm, *rest = list(m)
    act = rest[0] if rest else None
    if not (type(conv) is nn.Conv2d and isinstance(norm, nn.Identity)):
        return None
    if act is not None and type(act) not in ACTIVATION_NAMES:
        return None
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return None
    return conv, act


def _fuse_residual(block: nn.Module) -> FusedResidual | None:
    """A :class:`FusedResidual` for a (children already fused) eval-mode residual block, else None."""
    from torchvision.models.resnet import BasicBlock, Bottleneck

    if isinstance(block, (BottleneckBlock, ResidualBlock)):
        drop = block.drop_path
        if not (isinstance(drop, DropPath) and (drop.rate == 0.0 or not drop.training)):
            return None
        convs = [block.conv1, block.conv2] + ([block.conv3] if hasattr(block, "conv3") else [])
        act = ACTIVATION_NAMES.get(type(block.act))
        shortcut = block.shortcut
    elif isinstance(block, (Bottleneck, BasicBlock)):
        if not all(isinstance(getattr(block, f"bn{i}", None), nn.Identity) for i in (1, 2)):
            return None
        names = ["conv1", "conv2"] + (["conv3"] if isinstance(block, Bottleneck) else [])
        if not all(isinstance(getattr(block, n), FusedConv2d) for n in names):
            return None
        act = ACTIVATION_NAMES.get(type(block.relu))
        convs = [getattr(block, n) for n in names]
        for c in convs[:-1]:  # conv -> (folded BN) -> relu
            c.act = act
        shortcut = block.downsample if block.downsample is not None else nn.Identity()
        if isinstance(shortcut, nn.Sequential) and len(shortcut) == 2 and isinstance(shortcut[1], nn.Identity):
            shortcut = shortcut[0]
    else:
        return None
    if act is None or not all(isinstance(c, FusedConv2d) for c in convs) or convs[-1].act is not None:
        return None
    convs[-1].act = act
    return FusedResidual(convs[:-1], convs[-1], shortcut)


def _fuse_runs(module: nn.Module) -> int:
    """In a container run in order (Sequential, torchvision's IntermediateLayerGetter, ResNet's stem),
    ``conv -> Identity (folded BN) -> act`` becomes one fused conv and two Identities."""
    from torchvision.models._utils import IntermediateLayerGetter
    from torchvision.models.resnet import ResNet

    if isinstance(module, ResNet):
        names = ["conv1", "bn1", "relu"]
    elif type(module).forward in (nn.Sequential.forward, IntermediateLayerGetter.forward):
        names = [n for n, _ in module.named_children()]
    else:
        return 0
    n = 0
    children = dict(module.named_children())
    for a, b, c in zip(names, names[1:], names[2:]):
        conv, norm, act = children.get(a), children.get(b), children.get(c)
        if (type(conv) is nn.Conv2d and isinstance(norm, nn.Identity) and type(act) in ACTIVATION_NAMES
                and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)):  # fmt: skip
            setattr(module, a, FusedConv2d.from_conv(conv, act))
            setattr(module, c, nn.Identity())
            children[c] = nn.Identity()
            n += 1
    return n


def fuse_convolutions(model: nn.Module) -> int:
    """Rewrite an eval-mode, BN-folded ``model`` in place to :class:`~bicsnet.fused_ops.FusedConv2d` convolutions.

    Every folded conv (+ ReLU / SiLU) becomes one fused convolution, and every
    residual block a :class:`FusedResidual` whose last convolution also takes
    the shortcut add and the activation. Works on bicsnet's blocks and on
    torchvision's ResNets (the baselines), so both sides of a comparison get
    the same treatment. Exact: the same operations, one oneDNN call each on CPU
    (plain PyTorch operators elsewhere, see :mod:`bicsnet.fused_ops`).

    Returns:
        The number of convolutions now fused.
    """
    count = 0

    def visit(module: nn.Module) -> None:
        nonlocal count
        count += _fuse_runs(module)
        for name, child in list(module.named_children()):
            ca = _conv_act_of(child)
            if ca is not None:
                setattr(module, name, FusedConv2d.from_conv(*ca))
                count += 1
                continue
            if type(child) is nn.Conv2d and child.padding_mode == "zeros" and not isinstance(child.padding, str):
                setattr(module, name, FusedConv2d.from_conv(child))
                count += 1
                continue
            if isinstance(child, SharedPointwise) and type(child.conv) is nn.Conv2d and type(child.act) in ACTIVATION_NAMES:
                child.conv = FusedConv2d.from_conv(child.conv, child.act)
                child.act = nn.Identity()
                count += 1
                continue
            visit(child)
            fused = _fuse_residual(child)
            if fused is not None:
                setattr(module, name, fused)

    visit(model)
    return count


# --------------------------------------------------------------------------- entry point


def deploy(model: nn.Module, *, horizontal: bool = True, fuse: bool = True) -> nn.Module:
    """An eval-mode inference copy of ``model`` that computes the same outputs with fewer operators.

    Works on any bicsnet model and on torchvision models (for those, BN
    folding, the fused convolutions and the max-pools apply). The original is not modified. The copy is for
    inference only: training it is not supported (BN statistics are gone), and
    ``.train()`` on it raises RuntimeError wherever it holds a rewritten module
    (:class:`~bicsnet.fused_ops.InferenceOnly`: every bicsnet model, and every
    model with ``fuse=True``; a torchvision model deployed with ``fuse=False``
    is only BN-folded and keeps trainable convolutions).
    ``horizontal=False`` skips the shared 1x1 convolutions (rewrite 2 in the
    module docstring); ``fuse=False`` leaves out rewrite 7, the oneDNN fused
    convolutions (:class:`~bicsnet.fused_ops.FusedConv2d`; x1.2-1.3 faster
    eager CPU inference in ``benchmarks/deploy.md``).

    Returns:
        The deployed copy, in eval mode; its ``deploy_report`` attribute counts
        what was rewritten: ``batchnorms_folded``, ``batchnorms_left``,
        ``pointwise_convs_merged``, ``fusion_branches_rewritten``,
        ``convolutions_fused``, ``max_pools_replaced`` (plain ``nn.MaxPool2d``s, e.g. a torchvision
        ResNet's stem; bicsnet's own are built as :class:`~bicsnet.fused_ops.OneDNNMaxPool2d`),
        ``heads_rewritten`` (classification / segmentation heads; detection
        heads are only BN-folded) and ``onednn`` (bool: whether this PyTorch build runs the fused
        convolutions as oneDNN calls for float32 CPU inputs; where false, or on other inputs, the
        same modules run the plain operators). The rewritten branches keep their combined
        weights as buffers, so ``parameters()`` of the copy counts fewer tensors
        than it runs; it is not for training. Its ``state_dict()`` holds every
        tensor it computes with: ``deploy(fresh_model).load_state_dict(sd)``
        restores a saved deployed copy exactly.
    """
    bn_before = count_batchnorms(model)
    out = copy.deepcopy(model).eval()
    _fold_level_subnets(out)
    out = fold_batchnorm(out)
    report: dict[str, int | bool] = {"batchnorms_folded": bn_before - count_batchnorms(out)}
    merged = branches = 0
    for module in list(out.modules()):
        if not isinstance(module, BiCSNet):
            continue
        if horizontal:
            merged += _share_pointwise(module)
        for name in list(module.fusions.keys()):
            fusion = module.fusions[name]
            if isinstance(fusion, SpatialFusionModule):
                module.fusions[name] = DeployedFusion(fusion)
                branches += len(fusion.branches)
    report["heads_rewritten"] = _deploy_heads(out)
    report["convolutions_fused"] = fuse_convolutions(out) if fuse else 0
    report["max_pools_replaced"] = onednn_max_pools(out)
    if not fuse:  # the fusions' own projections and post-op chains use the plain operators too
        for m in out.modules():
            if isinstance(m, FusedConv2d):
                m.onednn = False
            elif isinstance(m, DeployedFusion):
                m.chained = []
    report["pointwise_convs_merged"] = merged
    report["fusion_branches_rewritten"] = branches
    report["batchnorms_left"] = count_batchnorms(out)
    # Whether the fused convolutions run as oneDNN calls here (float32 CPU inference); else plain operators.
    report["onednn"] = bool(fuse and report["convolutions_fused"] and onednn_available())
    out.deploy_report = report  # type: ignore[assignment]
    return out.eval()


# --------------------------------------------------------------------------- counting

# Allocation-only operators, and oneDNN's one-time weight layout (a cache, not per-call work).
_IGNORED = {"detach", "alias", "lift_fresh", "_to_copy", "empty", "zeros", "ones", "full", "new_empty",
            "_reorder_convolution_weight"}  # fmt: skip
_CONVOLUTIONS = ("convolution", "_convolution", "mkldnn_convolution", "_convolution_pointwise")


class _OpCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def operator_counts(fn: Any, *args: Any) -> dict[str, Any]:
    """ATen operators one call ``fn(*args)`` runs (under ``torch.no_grad``).

    Returns ``{"operators": total, "convolutions": n, "by_op": {name: n}}``;
    view / metadata operators (``view``, ``split`` pieces, ``detach``) are
    counted too, as they cost a dispatch each in eager mode; allocation-only
    ones are not.
    """
    counter = _OpCounter()
    with torch.no_grad(), counter:
        fn(*args)
    by_op = {k: v for k, v in sorted(counter.counts.items()) if k not in _IGNORED}
    return {
        "operators": sum(by_op.values()),
        "convolutions": sum(v for k, v in by_op.items() if k in _CONVOLUTIONS),
        "by_op": by_op,
    }

