"""Deploy-time re-parameterization (``bicsnet.deploy``): an inference copy that computes the same function with fewer, larger operators.

:func:`deploy` returns an eval-mode copy of any bicsnet model (backbone,
classifier, segmenter, RetinaNet, Mask R-CNN, lite detector) or torchvision
baseline whose outputs equal the eval-mode original's to float rounding
(tested to 1e-5 relative on every registered model). What it rewrites, and why
each rewrite is exact:

1. **BatchNorm folding** (:func:`bicsnet.tools.fastpath.fold_batchnorm`):
   every eval-mode BN that follows a convolution becomes the convolution's
   weight and bias, in the backbone, the Spatial Fusion Module and the
   detection / segmentation subnets. The lite detectors' subnets share each
   convolution across levels with one BN per level; deploy gives every level
   its own folded copy (:class:`LevelFoldedSubnet`).
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
from .arch.fusion import GlobalContext, ResampleBranch, ResizeTo, SpatialFusionModule, resize_to
from .models.heads import ClassificationHead, SegmentationHead
from .models.lite_head import SeparableSubnet
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
    "operator_counts",
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


class DeployedBranch(nn.Module):
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
        if isinstance(proj, nn.Identity):
            self.weight = None
            self.bias = None
            self.out_scale = s
        else:
            conv = proj[0]
            if not (isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and isinstance(proj[1], nn.Identity)):
                raise TypeError("deploy expects a folded 1x1 projection (fold_batchnorm first)")
            w = conv.weight.detach().flatten(1).double() * s
            b = (conv.bias.detach().double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)) * s
            self.register_buffer("weight", w.float().reshape(conv.weight.shape), persistent=False)
            self.register_buffer("bias", b.float(), persistent=False)
            self.out_scale = 1.0
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
        if self.weight is not None:
            W = self.weight.double().flatten(1)
            G0, G1, g = W @ G0, W @ G1, W @ g + self.bias.double()
        # Only an up-sampling branch can see two different means (uneven replication):
        # it keeps both maps; every other branch one combined map.
        if self.up:
            self.register_buffer("ctx_pre", G0.float(), persistent=False)
            self.register_buffer("ctx_post", G1.float(), persistent=False)
        else:
            self.register_buffer("ctx_weight", (G0 + G1).float(), persistent=False)
        self.register_buffer("ctx_bias", g.float(), persistent=False)

    def squeeze_width(self) -> int:
        """Channels of the map the global context acts on (the squeezed width)."""
        for p in (self.pre, self.post):
            if p is not None:
                return p[0].shape[0]
        if self.weight is not None:
            return self.weight.shape[1]
        raise ValueError("a branch without projection or global context has no width to infer")

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        z = self.down(self.gc_pre(self.squeeze(x)))
        # The mean of the map gc_post sees (after the resize): equal to z's when
        # nearest resizing repeats every pixel equally often.
        if self.has_context:
            m0 = F.adaptive_avg_pool2d(z, 1).flatten(1)
            if self.up:
                m1 = m0 if _exact_replication(z, size) else F.adaptive_avg_pool2d(resize_to(z, size), 1).flatten(1)
                v: torch.Tensor | None = F.linear(m0, self.ctx_pre, self.ctx_bias) + F.linear(m1, self.ctx_post)
            else:
                v = F.linear(m0, self.ctx_weight, self.ctx_bias)
        else:
            v = None if self.weight is None else self.bias.expand(z.shape[0], -1)
        y = z if self.weight is None else F.conv2d(z, self.weight)
        if self.out_scale != 1.0:
            y = y * self.out_scale
            v = None if v is None else v * self.out_scale
        if self.up:
            y = resize_to(y, size)  # after the 1x1 projection: fewer pixels to project
        return y, v


class DeployedFusion(nn.Module):
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

    def forward(self, inputs: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
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
            out.append(nn.MaxPool2d(3, 2, 1))
        elif run > 1:
            s = 2**run
            out.append(nn.MaxPool2d(2 * s - 1, s, s - 1))
        run = 0

    for m in seq:
        if _is_half_pool(m):
            run += 1
            continue
        flush()
        out.append(m)
    flush()
    return nn.Sequential(*out)


# --------------------------------------------------------------------------- lite subnets


class LevelFoldedSubnet(nn.Module):
    """A :class:`~bicsnet.models.lite_head.SeparableSubnet` with its per-level BNs folded into per-level convs.

    The subnet shares each separable convolution across levels and normalises
    each level with its own BN; folding needs one pointwise convolution per
    level (the depthwise one stays shared). Same ``forward(x, level)`` and
    ``forward_pyramid``.
    """

    def __init__(self, subnet: SeparableSubnet) -> None:
        super().__init__()
        self.act = subnet.act
        self.predictor = subnet.predictor
        levels = []
        for norms in subnet.norms:
            layers = []
            for sep, norm in zip(subnet.convs, norms):
                folded = fold_batchnorm(nn.Sequential(copy.deepcopy(sep[1]), norm))[0]
                layers.append(nn.Sequential(sep[0], folded))
            levels.append(nn.ModuleList(layers))
        self.levels = nn.ModuleList(levels)

    def forward(self, x: torch.Tensor, level: int) -> torch.Tensor:
        for conv in self.levels[level]:
            x = self.act(conv(x))
        return self.predictor(x)

    forward_pyramid = SeparableSubnet.forward_pyramid


def _fold_lite_subnets(model: nn.Module) -> None:
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, SeparableSubnet) and all(
                isinstance(n, (nn.BatchNorm2d, nn.SyncBatchNorm)) for norms in child.norms for n in norms
            ):
                setattr(module, name, LevelFoldedSubnet(child))


# --------------------------------------------------------------------------- heads


class DeployedClassificationHead(nn.Module):
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


class DeployedSegmentationHead(nn.Module):
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


# --------------------------------------------------------------------------- entry point


def deploy(model: nn.Module, *, horizontal: bool = True) -> nn.Module:
    """An eval-mode inference copy of ``model`` that computes the same outputs with fewer operators.

    Works on any bicsnet model and on torchvision models (for those, only BN
    folding applies). The original is not modified. The copy is for
    inference only: training it is not supported (BN statistics are gone).
    ``horizontal=False`` skips the shared 1x1 convolutions (rewrite 2 in the
    module docstring).

    Returns:
        The deployed copy, in eval mode; its ``deploy_report`` attribute counts
        what was rewritten: ``batchnorms_folded``, ``batchnorms_left``,
        ``pointwise_convs_merged``, ``fusion_branches_rewritten`` and
        ``heads_rewritten`` (classification / segmentation heads; detection
        heads are only BN-folded). The rewritten branches keep their combined
        weights as (non-persistent) buffers, so ``parameters()`` of the copy
        counts fewer tensors than it runs; it is not for training.
    """
    bn_before = count_batchnorms(model)
    out = copy.deepcopy(model).eval()
    _fold_lite_subnets(out)
    out = fold_batchnorm(out)
    report: dict[str, int] = {"batchnorms_folded": bn_before - count_batchnorms(out)}
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
    report["pointwise_convs_merged"] = merged
    report["fusion_branches_rewritten"] = branches
    report["batchnorms_left"] = count_batchnorms(out)
    out.deploy_report = report  # type: ignore[assignment]
    return out.eval()


# --------------------------------------------------------------------------- counting

_IGNORED = {"detach", "alias", "lift_fresh", "_to_copy", "empty", "zeros", "ones", "full", "new_empty"}


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
        "convolutions": sum(v for k, v in by_op.items() if k in ("convolution", "_convolution", "mkldnn_convolution")),
        "by_op": by_op,
    }

