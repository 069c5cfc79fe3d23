"""Whole-model parameters and FLOPs of classifiers, segmentors and detectors, with the official ``get_flops.py`` rule.

The official repository publishes dense-model FLOPs from ``detection|segmentation/get_flops.py``: mmcv's
``get_model_complexity_info`` on the model's ``forward_dummy`` (one ``3 x H x W`` image), plus the attention
matmuls mmcv cannot see, taken from the backbone's own ``flops()``. Two quirks of that rule are reproduced here:

* mmcv counts modules only: ``Conv2d`` (multiply-adds + one per output for the bias), ``ConvTranspose2d`` (its bias
  term uses ``out_h * out_h``), ``Linear`` (no bias term), norms (``numel``, doubled when affine), ``ReLU`` s and
  poolings (``numel``), ``nn.Upsample`` (output ``numel``). Functional calls (``F.relu`` of mmdet's RPN head,
  ``F.max_pool2d`` of the FPN's extra level, resizes, softmax, GELU) and RoIAlign count nothing.
* the added attention work: the CrossFormer v1 code (``crossformer`` branch, the published v1 rows) computes it at
  the input size with the v1 group layout (LDA groups of ``H / I x W / I`` tokens), which is what this package
  executes; the CrossFormer++ code (``main``) uses the backbone built for ``img_size[0] x img_size[0]`` (the
  factories pass ``[1280, 800]`` for detection, ``[1024, 1024]`` for CrossFormer++-S detection and all
  segmentation, and the backbone reads ``img_size[0]`` twice) with ``G x G`` groups, whatever the input shape.

``forward_dummy`` runs: RetinaNet backbone + FPN + head; (Cascade) Mask R-CNN backbone + FPN + RPN head + the box
head(s) on 1000 RoIs + the mask head(s) on 100 RoIs (every cascade stage on the same RoIs); segmentors backbone
(+ neck) + decode head (no auxiliary head). The CrossFormer trunk is counted analytically as mmcv would count the
official modules (qkv / proj over the padded groups, the position-bias MLP on ``(2G-1)^2`` offsets once per block,
every LayerNorm doubled); everything else is counted with forward hooks on this package's modules on the meta device.

``full`` is the honest count under the same per-module rules: the attention matmuls at the real input size.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..layers import split_channels
from .crossformer import CrossFormer

__all__ = ["PUBLISHED_DENSE", "mmcv_hook_flops", "model_complexity", "trunk_flops"]

# (family, default shape H x W, the official img_size[0] of the backbone factory)
_DET_SHAPE = (1280, 800)
_SEG_SHAPES = {"upernet": (512, 2048), "semfpn": (1024, 1024)}

#: Official README rows (params M, GFLOPs) of the dense models; ``None``: not published.
PUBLISHED_DENSE: dict[str, tuple[float, float | None]] = {
    "retinanet_crossformer_s": (40.8, 282.0),
    "retinanet_crossformerpp_s": (40.8, 282.0),
    "retinanet_crossformer_b": (62.1, 389.0),
    "retinanet_crossformerpp_b": (62.2, 389.0),
    "retinanet_resnet101": (56.7, 315.0),
    "retinanet_swin_t": (38.5, 245.0),
    "retinanet_swin_b": (98.4, 477.0),
    "maskrcnn_crossformer_s": (50.2, 301.0),
    "maskrcnn_crossformerpp_s": (43.0, 287.4),
    "maskrcnn_crossformer_b": (71.5, 407.9),
    "maskrcnn_crossformerpp_b": (71.5, 408.0),
    "maskrcnn_resnet101": (63.2, 336.0),
    "maskrcnn_swin_t": (47.8, 264.0),
    "maskrcnn_swin_b": (107.2, 496.0),
    "cascade_crossformer_s": (88.0, 769.7),
    "semfpn_crossformer_s": (34.3, 209.8),
    "semfpn_crossformerpp_s": (27.1, 199.5),
    "semfpn_crossformer_b": (55.6, 320.1),
    "semfpn_crossformerpp_b": (55.6, 331.1),
    "semfpn_crossformer_l": (95.4, 482.7),
    "upernet_crossformer_s": (62.3, 979.5),
    "upernet_crossformerpp_s": (53.1, 963.5),
    "upernet_crossformer_b": (83.6, 1089.7),
    "upernet_crossformerpp_b": (83.7, 1089.8),
    "upernet_crossformer_l": (125.5, 1257.8),
    "upernet_resnet101": (86.0, 1029.0),
    "upernet_swin_t": (60.0, 945.0),
    "upernet_swin_s": (81.0, 1038.0),
    "upernet_swin_b": (121.0, 1088.0),
}


# ---------------------------------------------------------------------------------------------------------------------
# mmcv's per-module rules, as forward hooks
# ---------------------------------------------------------------------------------------------------------------------

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)
_ACTS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.PReLU)
_POOLS = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
)  # fmt: skip


def _module_flops(m: nn.Module, x: Tensor, y: Tensor) -> float:
    """mmcv ``flops_counter`` hook of one module call (``x``: first input, ``y``: output)."""
    if isinstance(m, nn.ConvTranspose2d):
        per_pos = m.kernel_size[0] * m.kernel_size[1] * m.in_channels * (m.out_channels // m.groups)
        flops = per_pos * x.shape[0] * x.shape[2] * x.shape[3]
        if m.bias is not None:
            flops += m.out_channels * y.shape[0] * y.shape[2] * y.shape[2]  # mmcv's out_h * out_h
        return flops
    if isinstance(m, nn.modules.conv._ConvNd):
        positions = y.shape[0] * math.prod(y.shape[2:])
        flops = math.prod(m.kernel_size) * m.in_channels * (m.out_channels // m.groups) * positions
        return flops + (m.out_channels * positions if m.bias is not None else 0)
    if isinstance(m, nn.Linear):
        return x.numel() * y.shape[-1]
    if isinstance(m, _NORMS):
        affine = getattr(m, "affine", False) or getattr(m, "elementwise_affine", False)
        return x.numel() * (2 if affine else 1)
    if isinstance(m, _ACTS):
        return y.numel()
    if isinstance(m, _POOLS):
        return x.numel()
    if isinstance(m, nn.Upsample):
        return y.numel()
    return 0.0


def mmcv_hook_flops(model: nn.Module, run: Callable[[], Any], skip: tuple[nn.Module, ...] = ()) -> float:
    """Multiply-adds that mmcv's complexity counter attributes to ``model``'s modules while ``run()`` executes.

    Args:
        model: the modules to watch.
        run: the forward pass (e.g. on the meta device: only shapes are read).
        skip: sub-modules (and everything inside them) not to count, e.g. a trunk counted analytically.
    """
    skipped = {id(m) for s in skip for m in s.modules()}
    total = [0.0]

    def hook(m: nn.Module, args: tuple, out: Any) -> None:
        if args and isinstance(args[0], Tensor) and isinstance(out, Tensor):
            total[0] += _module_flops(m, args[0], out)

    handles = [m.register_forward_hook(hook) for m in model.modules() if id(m) not in skipped]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return total[0]


# ---------------------------------------------------------------------------------------------------------------------
# The CrossFormer trunk as mmcv sees the official modules, and the attention the official flops() adds back
# ---------------------------------------------------------------------------------------------------------------------


def _group(block: nn.Module) -> int:
    g = block.group_size
    return int(g[0] if isinstance(g, (tuple, list)) else g)


def _official_attention(block: nn.Module, h: int, w: int, dim: int) -> float:
    """The official dense backbone's ``flops()`` excluded term of one block at ``h x w``: ``nG * 2 * N^2 * C``
    with the configured group size and interval (no small-map fallback)."""
    g = _group(block)
    interval = block.interval if isinstance(block.interval, int) else block.interval[0]
    size_div = interval * g if block.long_distance else g
    hp, wp = math.ceil(h / size_div) * size_div, math.ceil(w / size_div) * size_div
    n = g * g
    return hp * wp / n * 2 * n * n * dim


def trunk_flops(body: CrossFormer, height: int, width: int, excluded_size: int | None) -> tuple[float, float]:
    """``(mmcv count of the official trunk modules at height x width, attention matmuls)``.

    The attention term is the official rule's (``flops()`` of a backbone built for ``excluded_size`` squared) when
    ``excluded_size`` is given, else the matmuls actually executed at ``height x width`` (padded groups).
    """
    stride = body.embed_kernel_sizes[0]
    h, w = height // stride, width // stride
    d = body.embed_dim
    flops = sum(h * w * c * (body.in_chans * k * k + 1) for k, c in zip(body.embed_kernel_sizes, split_channels(
        d, len(body.embed_kernel_sizes))))  # fmt: skip
    flops += 2 * h * w * d
    he, we = (excluded_size // stride,) * 2 if excluded_size else (h, w)
    attention = 0.0
    for s, stage in enumerate(body.layers):
        dim = d * 2**s
        heads = body.num_heads[s]
        ratio = body.mlp_ratio[s] if isinstance(body.mlp_ratio, (tuple, list)) else body.mlp_ratio
        for block in stage.blocks:
            layout = block.layout(h, w)
            padded = layout.num_groups * layout.group_tokens
            gh, gw = layout.group
            offsets = (2 * gh - 1) * (2 * gw - 1)
            pd = dim // 16
            dpb = offsets * (2 * pd + 3 * 3 * pd + 2 * pd * pd + pd * heads)  # linears, 3 LN (x2), 3 ReLU
            flops += 4 * h * w * dim + 4 * padded * dim * dim + dpb + 2 * h * w * dim * dim * ratio
            if block.use_acl:
                flops += h * w * dim * 10 + 2 * h * w * dim  # depthwise 3x3 conv with bias, LayerNorm
            if excluded_size:
                attention += _official_attention(block, he, we, dim)
            else:
                attention += layout.num_groups * 2 * layout.group_tokens**2 * dim
        if stage.downsample is not None:
            kernels = body.merge_kernel_sizes[s]
            flops += 2 * h * w * dim
            outs = split_channels(2 * dim, len(kernels))
            flops += sum((h // 2) * (w // 2) * c * (k * k * dim + 1) for k, c in zip(kernels, outs))
            h, w, he, we = h // 2, w // 2, he // 2, we // 2
    return flops, attention


# ---------------------------------------------------------------------------------------------------------------------
# forward_dummy of each family
# ---------------------------------------------------------------------------------------------------------------------


def _trunks(model: nn.Module) -> list[CrossFormer]:
    found = [m for m in model.modules() if isinstance(m, CrossFormer)]
    return [m for m in found if not any(o is not m and m in set(o.modules()) for o in found)]


def _trunk_shapes(trunk: CrossFormer, x: Tensor) -> list[Tensor]:
    """Empty maps of the trunk's output shapes: ``[B, C_i, ceil(H / s_i), ceil(W / s_i)]``."""
    return [
        x.new_empty((x.shape[0], c, -(-x.shape[2] // s), -(-x.shape[3] // s)))
        for c, s in zip(trunk.out_channels, trunk.out_strides)
    ]


def _detector_dummy(model: nn.Module, x: Tensor) -> Callable[[], None]:
    def run() -> None:
        feats = model.backbone(x)
        levels = list(feats.values())
        if hasattr(model, "head"):  # RetinaNet
            model.head(levels)
            return
        rpn = model.rpn.head
        relus = [m for m in rpn.modules() if isinstance(m, nn.ReLU)]
        for r in relus:  # mmdet's RPNHead applies F.relu (not counted): swap in a functional one for the count
            r.__class__ = _FunctionalReLU
        try:
            rpn(levels)
        finally:
            for r in relus:
                r.__class__ = nn.ReLU
        heads = model.roi_heads
        box_feats = x.new_empty((1000, levels[0].shape[1], 7, 7))
        mask_feats = x.new_empty((100, levels[0].shape[1], 14, 14))
        staged = isinstance(heads.box_head, nn.ModuleList)
        for i in range(len(heads.box_head) if staged else 1):
            box_head = heads.box_head[i] if staged else heads.box_head
            predictor = heads.box_predictor[i] if staged else heads.box_predictor
            predictor(box_head(box_feats))
        if heads.mask_head is not None:
            for i in range(len(heads.mask_head) if staged else 1):
                mask_head = heads.mask_head[i] if staged else heads.mask_head
                predictor = heads.mask_predictor[i] if staged else heads.mask_predictor
                predictor(mask_head(mask_feats))

    return run


class _FunctionalReLU(nn.ReLU):
    """A ``ReLU`` the hooks do not count (mmdet calls ``F.relu`` there)."""


def _segmentor_dummy(model: nn.Module, x: Tensor) -> Callable[[], None]:
    return lambda: model.decode_head(model.extract_feat(x))


def _build(name: str) -> tuple[str, nn.Module]:
    """``(family, model)`` built on the meta device; family ``classifier`` / ``detector`` / ``segmentor``."""
    from ..tasks.detection.model import list_detectors
    from .registry import create_model, list_variants

    with torch.device("meta"):
        if name in list_variants():
            return "classifier", create_model(name)
        if name in list_detectors(all_variants=True):
            from ..tasks.detection.model import build_detector

            return "detector", build_detector(name, num_classes=80)
        from ..tasks.segmentation.model import build_segmentor

        try:
            return "segmentor", build_segmentor(name, num_classes=150)
        except ValueError as err:
            raise ValueError(
                f"{name!r} is neither a classifier (crossformer models), a detector (list_detectors()) nor a "
                f"segmentor: {err}"
            ) from None


def default_shape(name: str) -> tuple[int, int]:
    """The input the published numbers used: 224 x 224 classifiers, 1280 x 800 detectors (``get_flops.py``'s
    default), 512 x 2048 UPerNet (Swin's convention) and 1024 x 1024 Semantic FPN (segmentation ``get_flops.py``'s
    default); the shapes that reproduce the CrossFormer-S/B/L rows."""
    head = name.partition("_")[0]
    if head in ("retinanet", "fasterrcnn", "maskrcnn", "cascade"):
        return _DET_SHAPE
    return _SEG_SHAPES.get(head, (224, 224))


def _excluded_size(name: str, family: str) -> int:
    """``img_size[0]`` of the official backbone factory: detection 1280 (CrossFormer++-S: 1024), segmentation 1024."""
    if family == "detector":
        return 1024 if name.endswith("crossformerpp_s") else 1280
    return 1024


def model_complexity(name: str, shape: tuple[int, int] | None = None) -> dict[str, Any]:
    """Parameters and GFLOPs of a classifier, segmentor or detector by name, next to the published row.

    Returns:
        ``{"name", "family", "shape": [H, W], "params", "params_M", "gflops" (the official rule),
        "gflops_full" (attention at the real input), "published_params_M", "published_gflops", "note"}``.
    """
    family, model = _build(name)
    params = sum(p.numel() for p in model.parameters())
    if family == "classifier":
        from .flops import PUBLISHED, count_flops

        shape = shape or (224, 224)
        official = count_flops(model, shape, "official").gflops
        full = count_flops(model, shape, "executed").gflops
        pub = PUBLISHED.get(name, (None, None))
        return _row(name, family, shape, params, official, full, pub, "")
    shape = shape or default_shape(name)
    x = torch.empty((1, 3, *shape), device="meta")
    trunks = _trunks(model)
    run = _detector_dummy(model, x) if family == "detector" else _segmentor_dummy(model, x)
    for trunk in trunks:  # counted analytically: stand in its output shapes (it does not run on the meta device)
        trunk.forward = functools.partial(_trunk_shapes, trunk)
    with torch.no_grad():
        hooks = mmcv_hook_flops(model.eval(), run, skip=tuple(trunks))
    official = full = hooks
    note = ""
    if trunks:
        _, executed = trunk_flops(trunks[0], *shape, None)
        # v1 (fixed_interval) weights were counted with the v1 code, whose flops() follows the input size; the
        # CrossFormer++ code's flops() uses the factory's img_size[0] squared
        v1 = getattr(trunks[0], "lda_rule", "fixed_interval") == "fixed_interval"
        base, added = trunk_flops(trunks[0], *shape, None if v1 else _excluded_size(name, family))
        official, full = hooks + base + added, hooks + base + executed
    else:
        note = "non-CrossFormer trunk: mmcv module rules only (its attention matmuls are not counted)"
    pub = PUBLISHED_DENSE.get(name, (None, None))
    return _row(name, family, shape, params, official / 1e9, full / 1e9, pub, note)


def _row(name, family, shape, params, official, full, published, note) -> dict[str, Any]:
    return {
        "name": name,
        "family": family,
        "shape": list(shape),
        "params": params,
        "params_M": round(params / 1e6, 2),
        "gflops": round(official, 2),
        "gflops_full": round(full, 2),
        "published_params_M": published[0],
        "published_gflops": published[1],
        "note": note,
    }
