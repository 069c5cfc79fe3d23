"""HRFormer (NeurIPS 2021, "HRFormer: High-Resolution Transformer for Dense Prediction") in pure PyTorch, timm-native.

HRFormer is HRNet with its residual units replaced by transformer blocks: a convolutional stem (two stride-2 3x3
convs and two bottlenecks) feeds 2, then 3, then 4 parallel branches at strides 4 / 8 / 16 / 32 whose widths are
``C, 2C, 4C, 8C``. Every branch runs *local-window* self-attention (non-overlapping ``w x w`` windows, relative
position bias) and a depth-wise-conv FFN; after each module the branches exchange information through HRNet's
fuse layers (1x1 conv + nearest upsampling to go up, strided depth-wise / point-wise convs to go down). The
classification head (HRNet-W's ``incre_modules`` / ``downsamp_modules`` / ``final_layer``, 2048 channels, average
pool, linear) turns the four branches into one vector.

* State-dict keys equal the official ``cls/models/hrt.py`` (classification) and
  ``seg/lib/models/backbones/hrt/hrt_backbone.py`` (dense) keys, so official files load without renaming;
  the derived ``relative_position_index`` buffers of the official files are dropped by
  :func:`checkpoint_filter_fn` (here they are rebuilt, non-persistent), which also resizes bias tables built for
  another window (:func:`resize_bias_table`: the 13 x 13 / 15 x 15 dense models start from the 7 x 7 ImageNet file).
* Any input size works: windows that do not tile a branch are zero-padded around the map (centred, as the
  official ``PadBlock``), and the fuse layers resize to the target branch's exact size, as the official code does.
* ``forward_intermediates`` / ``features_only`` give the four branch maps (NCHW, strides 4 / 8 / 16 / 32) of the
  last module; :class:`HRFormerBackbone` is the head-less dense trunk (official dense key layout).
"""

# No ``from __future__ import annotations``: torch.fx copies ``forward``'s annotations into the code it generates,
# and TorchScript cannot resolve them there as strings (FX-traced-then-scripted models).
import math
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import DropPath, SelectAdaptivePool2d, trunc_normal_
from timm.models import generate_default_cfgs, register_model, register_notrace_module
from timm.models._features import feature_take_indices
from torch import nn

from ._common import build_family_model, imagenet_cfg, init_weights, run_blocks

__all__ = [
    "HRFORMER_VARIANTS",
    "HRFormer",
    "HRFormerBackbone",
    "HRFormerBlock",
    "HRFormerModule",
    "WindowAttention",
    "checkpoint_filter_fn",
    "create_hrformer_backbone",
    "resize_bias_table",
]

#: Width ``C`` of the highest-resolution branch, heads per branch and modules in stages 2 / 3 / 4 of every variant
#: (official ``cls/configs/hrt/hrt_{tiny,small,base}.yaml``; dense ``hrt_config.py`` has the same S / B).
HRFORMER_VARIANTS: dict[str, dict[str, Any]] = {
    "hrformer_t": dict(width=18, num_heads=(1, 2, 4, 8), num_modules=(1, 3, 2), drop_path_rate=0.0),
    "hrformer_s": dict(width=32, num_heads=(1, 2, 4, 8), num_modules=(1, 4, 2), drop_path_rate=0.0),
    "hrformer_b": dict(width=78, num_heads=(2, 4, 8, 16), num_modules=(1, 4, 2), drop_path_rate=0.2),
}

_BN_MOMENTUM = 0.1
#: Channels of the classification head's bottlenecks per branch (HRNet's head; x4 after the bottleneck).
_HEAD_CHANNELS = (32, 64, 128, 256)
_HEAD_FEATURES = 2048


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, momentum=_BN_MOMENTUM)


class Bottleneck(nn.Module):
    """ResNet bottleneck (1x1 -> 3x3 -> 1x1 x4, BN, ReLU); ``depthwise`` makes the 3x3 depth-wise (the head's).

    [B, C_in, H, W] -> [B, 4 * planes, H, W].
    """

    expansion = 4

    def __init__(self, inplanes: int, planes: int, downsample: nn.Module | None = None, depthwise: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = _bn(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False, groups=planes if depthwise else 1)
        self.bn2 = _bn(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = _bn(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.bn3(self.conv3(x))
        return self.relu(x + shortcut)


def _bottleneck_layer(inplanes: int, planes: int, blocks: int, depthwise: bool = False) -> nn.Sequential:
    downsample = None
    if inplanes != planes * 4:
        downsample = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, bias=False), _bn(planes * 4))
    layers = [Bottleneck(inplanes, planes, downsample, depthwise)]
    layers += [Bottleneck(planes * 4, planes, depthwise=depthwise) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class MultiheadProjections(nn.Module):
    """The official ``MultiheadAttentionRPE`` parameters: separate q / k / v / out projections and a relative
    position bias table ``[(2w-1)^2, heads]``, so the keys are ``{q,k,v,out}_proj.*`` and
    ``relative_position_bias_table``.

    ``forward``: windows ``[N, w*w, C]`` -> ``[N, w*w, C]``.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int, attn_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"HRFormer: {dim} channels do not split into {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.window_size = window_size
        self.attn_drop = attn_drop
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij"))
        rel = (coords.flatten(1)[:, :, None] - coords.flatten(1)[:, None, :]).permute(1, 2, 0) + (window_size - 1)
        # derived from window_size: rebuilt here, so not saved (the official files carry it; the filter drops it)
        self.register_buffer("relative_position_index", rel[..., 0] * (2 * window_size - 1) + rel[..., 1], False)
        trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, c = x.shape
        q = self.q_proj(x).view(n, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(n, t, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(n, t, self.num_heads, self.head_dim).transpose(1, 2)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(t, t, self.num_heads).permute(2, 0, 1).to(q.dtype)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias.unsqueeze(0), dropout_p=self.attn_drop if self.training else 0.0
        )
        return self.out_proj(out.transpose(1, 2).reshape(n, t, c))


@register_notrace_module  # torch.fx leaf: the window padding is planned from the map's size
class WindowAttention(nn.Module):
    """Local-window self-attention of an ``[B, H, W, C]`` map (official ``MultiheadISAAttention``, ``isa_local``).

    The map is zero-padded to a multiple of the window, centred (``pad // 2`` before, the rest after; padded tokens
    take part in the attention, as in the official code), cut into ``w x w`` windows, attended, and cropped back.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int, attn_drop: float = 0.0):
        super().__init__()
        self.window_size = window_size
        self.attn = MultiheadProjections(dim, num_heads, window_size, attn_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, H, W, C] -> [B, H, W, C]."""
        b, h, w, c = x.shape
        ws = self.window_size
        ph, pw = -h % ws, -w % ws
        if ph or pw:
            x = F.pad(x, (0, 0, pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        hp, wp = h + ph, w + pw
        x = x.view(b, hp // ws, ws, wp // ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, c)
        x = self.attn(x)
        x = x.view(b, hp // ws, wp // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
        if ph or pw:
            x = x[:, ph // 2 : ph // 2 + h, pw // 2 : pw // 2 + w]
        return x


class ConvFFN(nn.Module):
    """The official ``MlpDWBN``: 1x1 conv -> BN -> GELU -> 3x3 depth-wise -> BN -> GELU -> 1x1 conv -> BN -> GELU.

    [B, C, H, W] -> [B, C, H, W].
    """

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act1 = nn.GELU()
        self.norm1 = nn.BatchNorm2d(hidden)
        self.dw3x3 = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act2 = nn.GELU()
        self.norm2 = nn.BatchNorm2d(hidden)
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        self.act3 = nn.GELU()
        self.norm3 = nn.BatchNorm2d(dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.norm1(self.fc1(x)))
        x = self.drop(self.act2(self.norm2(self.dw3x3(x))))
        return self.drop(self.act3(self.norm3(self.fc2(x))))


class HRFormerBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(LN(x))``, then ``x + ffn(LN(x))`` (LayerNorm eps 1e-6).

    [B, C, H, W] -> [B, C, H, W] (official ``GeneralTransformerBlock``; keys ``attn.attn.*``, ``norm1/2``, ``mlp.*``).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        drop: float = 0.0,
        attn_drop: float = 0.0,
    ):
        super().__init__()
        self.attn = WindowAttention(dim, num_heads, window_size, attn_drop)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.mlp = ConvFFN(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)  # [B, H, W, C]
        x = x + self.drop_path(self.attn(self.norm1(x)))
        y = self.mlp(self.norm2(x).permute(0, 3, 1, 2))
        return (x + self.drop_path(y.permute(0, 2, 3, 1))).permute(0, 3, 1, 2).contiguous()


def _fuse_down(cin: int, cout: int, steps: int) -> nn.Sequential:
    """``steps`` stride-2 (depth-wise 3x3 + BN, point-wise 1x1 + BN) units, ReLU between them (not after the last)."""
    units = []
    for k in range(steps):
        last = k == steps - 1
        layers = [nn.Conv2d(cin, cin, 3, 2, 1, groups=cin, bias=False), _bn(cin)]
        layers += [nn.Conv2d(cin, cout if last else cin, 1, bias=False), _bn(cout if last else cin)]
        if not last:
            layers.append(nn.ReLU(False))
        units.append(nn.Sequential(*layers))
    return nn.Sequential(*units)


class HRFormerModule(nn.Module):
    """One high-resolution module: a few transformer blocks per branch, then HRNet's multi-resolution fusion.

    ``forward``: list of ``[B, C_i, H_i, W_i]`` -> list of the same shapes. Branch ``j`` reaches branch ``i > j``
    by strided convs and branch ``i < j`` by a 1x1 conv, nearest upsampling by ``2^(j-i)`` and a bilinear resize
    (``align_corners=True``) to branch ``i``'s exact size; the sum goes through a ReLU.
    """

    def __init__(
        self,
        channels: Sequence[int],
        num_heads: Sequence[int],
        num_blocks: int = 2,
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        drop_path: Sequence[float] = (0.0, 0.0),
        attn_drop: float = 0.0,
        drop: float = 0.0,
    ):
        super().__init__()
        n = len(channels)
        self.branches = nn.ModuleList(
            nn.Sequential(
                *(
                    HRFormerBlock(c, h, window_size, mlp_ratio, drop_path[k], drop=drop, attn_drop=attn_drop)
                    for k in range(num_blocks)
                )
            )
            for c, h in zip(channels, num_heads)
        )
        self.fuse_layers = None
        if n > 1:
            self.fuse_layers = nn.ModuleList()
            for i in range(n):
                row = nn.ModuleList()
                for j in range(n):
                    if j > i:
                        row.append(
                            nn.Sequential(
                                nn.Conv2d(channels[j], channels[i], 1, bias=False),
                                _bn(channels[i]),
                                nn.Upsample(scale_factor=2 ** (j - i), mode="nearest"),
                            )
                        )
                    elif j == i:
                        row.append(nn.Identity())
                    else:
                        row.append(_fuse_down(channels[j], channels[i], i - j))
                self.fuse_layers.append(row)
        # one ReLU per fused output: branch i's output is the node ``fuse_act.i`` (torch.fx feature extraction)
        self.fuse_act = nn.ModuleList(nn.ReLU(inplace=True) for _ in range(n)) if n > 1 else None
        self.grad_checkpointing = False

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        ys = []
        for i, branch in enumerate(self.branches):
            if torch.jit.is_scripting():  # (TorchScript compiles only this branch)
                ys.append(branch(xs[i]))
            else:
                ys.append(run_blocks(branch, xs[i], grad_checkpointing=self.grad_checkpointing))
        if self.fuse_layers is None or self.fuse_act is None:
            return ys
        out = []
        for i, (row, act) in enumerate(zip(self.fuse_layers, self.fuse_act)):
            y = ys[i]
            for j, layer in enumerate(row):  # y = sum_j layer_j(ys[j]), j in order (layer_i: Identity)
                z = layer(ys[j])
                if j > i:
                    z = F.interpolate(z, size=ys[i].shape[-2:], mode="bilinear", align_corners=True)
                y = z if j == 0 else y + z
            out.append(act(y))
        return out


def _transition(previous: Sequence[int], current: Sequence[int]) -> nn.ModuleList:
    """Official ``_make_transition_layer``: 3x3 conv-BN-ReLU where a width changes (Identity where not), and a
    stride-2 3x3 conv-BN-ReLU from the last branch for each new branch."""
    layers = nn.ModuleList()
    for i, c in enumerate(current):
        if i < len(previous):
            if c != previous[i]:
                layers.append(nn.Sequential(nn.Conv2d(previous[i], c, 3, 1, 1, bias=False), _bn(c), nn.ReLU(True)))
            else:
                layers.append(nn.Identity())
        else:
            convs = []
            for j in range(i + 1 - len(previous)):
                cin = previous[-1]
                cout = c if j == i - len(previous) else cin
                convs.append(nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1, bias=False), _bn(cout), nn.ReLU(True)))
            layers.append(nn.Sequential(*convs))
    return layers


class HRFormer(nn.Module):
    """HRFormer for image classification (official ``HighResolutionTransformer``), with timm's model contract.

    Args:
        width: Channels of the stride-4 branch ``C`` (branches: C, 2C, 4C, 8C). T 18, S 32, B 78.
        num_heads: Heads per branch.
        num_modules: Modules in stages 2, 3, 4.
        num_blocks: Transformer blocks per branch in each module (2 in every official config).
        window_size: Attention window (7 for ImageNet; the dense configs also use 13 and 15).
        mlp_ratio: FFN expansion.
        num_classes: Classifier outputs (0: no classifier, ``forward`` returns pooled features).
        global_pool: timm pooling of the 2048-channel head map (``"avg"`` is the official pooling).
        in_chans: Image channels.
        drop_rate: Dropout before the classifier.
        drop_path_rate: Stochastic depth, linear over the 12 (T) / 14 (S, B) blocks of one branch.
        attn_drop_rate: Attention dropout.
        proj_drop_rate: FFN dropout.
        head: Build the classification head (``incre_modules``, ``downsamp_modules``, ``final_layer``,
            ``classifier``); False gives the dense trunk of :class:`HRFormerBackbone`.
    """

    def __init__(
        self,
        width: int = 32,
        num_heads: Sequence[int] = (1, 2, 4, 8),
        num_modules: Sequence[int] = (1, 4, 2),
        num_blocks: int = 2,
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        num_classes: int = 1000,
        global_pool: str = "avg",
        in_chans: int = 3,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        head: bool = True,
    ):
        super().__init__()
        if len(num_heads) != 4 or len(num_modules) != 3:
            raise ValueError(
                f"HRFormer has 4 branches and 3 transformer stages: num_heads={num_heads!r}, "
                f"num_modules={num_modules!r}"
            )
        if window_size < 1 or width < 1 or num_blocks < 1:
            raise ValueError(
                f"HRFormer: width, num_blocks and window_size must be >= 1, got {width}, {num_blocks}, {window_size}"
            )
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.drop_rate = drop_rate
        self.window_size = window_size
        self.grad_checkpointing = False
        channels = [width * 2**i for i in range(4)]
        self.branch_channels = channels

        self.conv1 = nn.Conv2d(in_chans, 64, 3, 2, 1, bias=False)
        self.bn1 = _bn(64)
        self.conv2 = nn.Conv2d(64, 64, 3, 2, 1, bias=False)
        self.bn2 = _bn(64)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = _bottleneck_layer(64, 64, 2)

        depth = num_blocks * sum(num_modules)
        dpr = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        previous = [256]
        start = 0
        for s, modules in enumerate(num_modules):
            n = s + 2
            setattr(self, f"transition{s + 1}", _transition(previous, channels[:n]))
            stage = []
            for m in range(modules):
                stage.append(
                    HRFormerModule(
                        channels[:n],
                        num_heads[:n],
                        num_blocks,
                        window_size,
                        mlp_ratio,
                        dpr[start + m * num_blocks : start + (m + 1) * num_blocks],
                        attn_drop=attn_drop_rate,
                        drop=proj_drop_rate,
                    )
                )
            setattr(self, f"stage{n}", nn.Sequential(*stage))
            start += modules * num_blocks
            previous = channels[:n]

        self.feature_info = [  # the fused outputs of the last module (what forward_intermediates returns)
            dict(num_chs=c, reduction=4 * 2**i, module=f"stage4.{num_modules[2] - 1}.fuse_act.{i}")
            for i, c in enumerate(channels)
        ]
        self.has_head = head
        if head:
            self._make_cls_head(channels)
            self.num_features = self.head_hidden_size = _HEAD_FEATURES
        else:
            self.num_features = self.head_hidden_size = channels[-1]
        self.global_pool_layer = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        self.head_drop = nn.Dropout(drop_rate)
        self.classifier = (
            nn.Linear(self.num_features * self.global_pool_layer.feat_mult(), num_classes)
            if num_classes > 0 and head
            else nn.Identity()
        )
        self.apply(partial(init_weights, convs=True))

    def _make_cls_head(self, channels: Sequence[int]) -> None:
        self.incre_modules = nn.ModuleList(
            _bottleneck_layer(c, h, 1, depthwise=True) for c, h in zip(channels, _HEAD_CHANNELS)
        )
        self.downsamp_modules = nn.ModuleList()
        for i in range(len(channels) - 1):
            cin, cout = _HEAD_CHANNELS[i] * 4, _HEAD_CHANNELS[i + 1] * 4
            self.downsamp_modules.append(
                nn.Sequential(
                    nn.Conv2d(cin, cin, 3, 2, 1, groups=cin),
                    _bn(cin),
                    nn.Conv2d(cin, cout, 1),
                    _bn(cout),
                    nn.ReLU(True),
                )
            )
        self.final_layer = nn.Sequential(
            nn.Conv2d(_HEAD_CHANNELS[3] * 4, _HEAD_FEATURES, 1), _bn(_HEAD_FEATURES), nn.ReLU(True)
        )

    # ------------------------------------------------------------------ timm model contract
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """The official recipe's exclusions: position-bias tables, every norm weight and every bias."""
        return {name for name, p in self.named_parameters() if p.ndim <= 1 or "relative_position_bias_table" in name}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(
            stem=r"^conv[12]|bn[12]|layer1",
            blocks=r"^(?:transition|stage)(\d+)"
            if coarse
            else [
                (r"^transition(\d+)", (0,)),
                (r"^stage(\d+)\.(\d+)", None),
                (r"^incre_modules|downsamp_modules|final_layer", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute every transformer block's activations in the backward pass instead of keeping them."""
        self.grad_checkpointing = enable
        for m in self.modules():
            if isinstance(m, HRFormerModule):
                m.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
            self.global_pool_layer = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        feats = self.num_features * self.global_pool_layer.feat_mult()
        self.classifier = nn.Linear(feats, num_classes) if num_classes > 0 else nn.Identity()

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a clear error for inputs the model cannot take."""
        if isinstance(x, torch.fx.Proxy):  # symbolic tracing: no sizes to check
            return
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"expected a floating-point image batch [B, {self.in_chans}, H, W], got {shape}")
        if x.shape[1] != self.in_chans:
            raise ValueError(f"expected {self.in_chans} input channels, got shape {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise ValueError(f"empty batch: got shape {tuple(x.shape)}")

    def forward_branches(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[B, 3, H, W] -> the four branch maps ``[B, 2^i C, H_i, W_i]`` (strides 4, 8, 16, 32; sizes as the stride-2
        convs give them: ``H_1 = ceil(ceil(H/2)/2)``, then halved rounding up)."""
        if not torch.jit.is_scripting():
            self.check_input(x)
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        # the three stages written out: TorchScript cannot look submodules up by a computed name
        xs = [self.layer1(x)]
        xs = [t(xs[i] if i < len(xs) else xs[-1]) for i, t in enumerate(self.transition1)]
        for module in self.stage2:
            xs = module(xs)
        xs = [t(xs[i] if i < len(xs) else xs[-1]) for i, t in enumerate(self.transition2)]
        for module in self.stage3:
            xs = module(xs)
        xs = [t(xs[i] if i < len(xs) else xs[-1]) for i, t in enumerate(self.transition3)]
        for module in self.stage4:
            xs = module(xs)
        return xs

    def _cls_map(self, xs: list[torch.Tensor]) -> torch.Tensor:
        """The head's [B, 2048, h, w] map from the four branches (HRFormer always has four)."""
        y = self.incre_modules[0](xs[0])
        y = self.incre_modules[1](xs[1]) + self.downsamp_modules[0](y)
        y = self.incre_modules[2](xs[2]) + self.downsamp_modules[1](y)
        y = self.incre_modules[3](xs[3]) + self.downsamp_modules[2](y)
        return self.final_layer(y)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """The four branch maps of the last module (timm semantics; "stages" are the branches here).

        Args:
            x: Image batch [B, C, H, W].
            indices: Last n branches if int, all if None, else the branch indices.
            norm: Unused (HRFormer has no final norm).
            stop_early: Unused (all branches come out of the last module together).
            output_fmt: ``"NCHW"`` or ``"NHWC"``.
            intermediates_only: Return only the maps.

        Returns:
            The maps ``[B, 2^i C, H/2^(i+2), W/2^(i+2)]``, or ``(forward_features output, maps)``.
        """
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        take, _ = feature_take_indices(4, indices)
        xs = self.forward_branches(x)
        maps = [xs[i] if output_fmt == "NCHW" else xs[i].permute(0, 2, 3, 1) for i in take]
        if intermediates_only:
            return maps
        return (self._cls_map(xs) if self.has_head else xs[-1]), maps

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the classification head (every branch is computed by the last module, so none is cut)."""
        take, _ = feature_take_indices(4, indices)
        if prune_head:
            for name in ("incre_modules", "downsamp_modules", "final_layer"):
                if hasattr(self, name):
                    delattr(self, name)
            self.has_head = False
            self.num_features = self.head_hidden_size = self.branch_channels[-1]
            self.reset_classifier(0, "")
        return take

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> the head's [B, 2048, H/32, W/32] map (without a head: the stride-32 branch)."""
        xs = self.forward_branches(x)
        return self._cls_map(xs) if self.has_head else xs[-1]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """[B, C, h, w] map -> logits [B, classes] (pooled [B, C] with ``pre_logits``)."""
        x = self.head_drop(self.global_pool_layer(x))
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class HRFormerBackbone(HRFormer):
    """The dense trunk (official ``seg/.../hrt_backbone.py``, no ImageNet head): ``forward`` returns the four branch
    maps ``[B, 2^i C, H_i, W_i]``; attributes ``out_channels`` / ``out_strides`` for the segmentation builders."""

    def __init__(self, out_indices: Sequence[int] = (0, 1, 2, 3), **kwargs: Any):
        kwargs.update(num_classes=0, global_pool="", head=False)
        super().__init__(**kwargs)
        self.out_indices = list(feature_take_indices(4, list(out_indices))[0])
        self.out_channels = [self.branch_channels[i] for i in self.out_indices]
        self.out_strides = [4 * 2**i for i in self.out_indices]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # type: ignore[override]
        xs = self.forward_branches(x)
        return [xs[i] for i in self.out_indices]


def create_hrformer_backbone(name: str, **kwargs: Any) -> HRFormerBackbone:
    """The dense trunk of variant ``name`` (``hrformer_s``; ``window_size=13`` for the dense ``hrt_base_win13``)."""
    if name not in HRFORMER_VARIANTS:
        raise ValueError(f"unknown HRFormer variant {name!r}; expected one of {list(HRFORMER_VARIANTS)}")
    model = HRFormerBackbone(**{**HRFORMER_VARIANTS[name], **kwargs})
    model.pretrained_cfg = dict(architecture=name)
    return model


# ---------------------------------------------------------------------- weights, variants, registry
def resize_bias_table(table: torch.Tensor, window_size: int) -> torch.Tensor:
    """A relative position bias table ``[(2w-1)^2, heads]`` built for ``w x w`` windows, resized for ``window_size``.

    The table is a ``(2w-1) x (2w-1)`` grid of offsets (row-major, as ``relative_position_index`` reads it) per head;
    it is resized to ``(2 window_size - 1)^2`` by bilinear interpolation with ``align_corners=False``, as the official
    dense loader (``seg/lib/models/tools/module_helper.py``, ``network="hrt_window"``) does when ``hrt_base_win13`` /
    ``win15`` start from the 7 x 7 ImageNet ``hrt_base.pth``. Returns ``[(2 window_size - 1)^2, heads]`` in the
    table's dtype (computed in float32 at least).

    Raises:
        ValueError: ``table`` is not 2-D with a square number of rows.
    """
    side = math.isqrt(table.shape[0]) if table.ndim == 2 else 0
    if table.ndim != 2 or side * side != table.shape[0] or side % 2 == 0:
        raise ValueError(
            f"HRFormer: a relative position bias table has shape {tuple(table.shape)}, expected "
            "[(2w-1)^2, heads] for a window w"
        )
    target = 2 * window_size - 1
    if side == target:
        return table
    heads = table.shape[1]
    grid = table.detach().permute(1, 0).reshape(1, heads, side, side)
    work = grid.float() if grid.dtype in (torch.float16, torch.bfloat16) else grid
    out = F.interpolate(work, size=(target, target), mode="bilinear", align_corners=False)
    return out.to(table.dtype).reshape(heads, target * target).permute(1, 0).contiguous()


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: HRFormer) -> dict[str, torch.Tensor]:
    """An official file's state dict for ``model``: unwrap ``model`` / ``state_dict`` / ``module.`` / ``backbone.``
    wrappers, drop the derived ``relative_position_index`` buffers, drop the ImageNet head when ``model`` has
    none (official dense backbones are initialised from the classification files this way), and resize relative
    position bias tables built for another window (``hrt_base.pth``'s 7 x 7 into a 13 x 13 / 15 x 15 model, see
    :func:`resize_bias_table`) when ``model`` has the same number of heads there.

    Works on a ``meta``-device ``model`` (only its parameter shapes are read); applying it to its own output
    changes nothing.
    """
    for key in ("model", "state_dict"):
        if isinstance(state_dict.get(key), dict):
            state_dict = state_dict[key]
    own = {k: v.shape for k, v in model.named_parameters() if k.endswith("relative_position_bias_table")}
    out = {}
    for k, v in state_dict.items():
        for prefix in ("module.", "backbone."):
            if k.startswith(prefix):
                k = k[len(prefix) :]
        if k.endswith("relative_position_index"):
            continue
        if not getattr(model, "has_head", True) and k.startswith(
            ("incre_modules", "downsamp_modules", "final_layer", "classifier")
        ):
            continue
        shape = own.get(k)
        if shape is not None and isinstance(v, torch.Tensor) and v.ndim == 2 and v.shape != shape:
            side = math.isqrt(v.shape[0])
            if v.shape[1] == shape[1] and side * side == v.shape[0] and side % 2 == 1:
                v = resize_bias_table(v, (math.isqrt(shape[0]) + 1) // 2)
        out[k] = v
    return out


def _create(variant: str, pretrained: bool, kwargs: dict[str, Any]) -> HRFormer:
    return build_family_model(
        HRFormer, variant, pretrained, checkpoint_filter_fn, **{**HRFORMER_VARIANTS[variant], **kwargs}
    )


def _cfg(**kwargs: Any) -> dict[str, Any]:
    # official ImageNet pipeline (cls/config.py, Swin's): bicubic resize of 224 / 0.875 = 256, centre crop 224
    return imagenet_cfg(
        first_conv="conv1",
        classifier="classifier",
        license="mit",
        origin_url="https://github.com/HRNet/HRFormer",
        paper_ids="arXiv:2110.09408",
        **kwargs,
    )


default_cfgs = generate_default_cfgs({"hrformer_t.in1k": _cfg(), "hrformer_s.in1k": _cfg(), "hrformer_b.in1k": _cfg()})


@register_model
def hrformer_t(pretrained: bool = False, **kwargs: Any) -> HRFormer:
    """HRFormer-T: 8.04 M params (width 18, heads 1/2/4/8, modules 1/3/2)."""
    return _create("hrformer_t", pretrained, kwargs)


@register_model
def hrformer_s(pretrained: bool = False, **kwargs: Any) -> HRFormer:
    """HRFormer-S: 13.54 M params (width 32, heads 1/2/4/8, modules 1/4/2)."""
    return _create("hrformer_s", pretrained, kwargs)


@register_model
def hrformer_b(pretrained: bool = False, **kwargs: Any) -> HRFormer:
    """HRFormer-B: 50.32 M params (width 78, heads 2/4/8/16, modules 1/4/2)."""
    return _create("hrformer_b", pretrained, kwargs)


def count_parameters(model: nn.Module) -> int:
    """Parameters of ``model`` (buffers excluded), as the official code and the paper count them."""
    return sum(math.prod(p.shape) for p in model.parameters())
