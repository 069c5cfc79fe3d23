"""A straightforward functional CrossFormer written from the official code's description, layer by layer.

This is the *reference path*: token sequences ``[B, L, C]``, explicit zero padding of the normalised map,
an explicit ``[groups, N, N]`` mask with -1e6, explicit official-style grouping reshapes for each rule, and
the position bias recomputed per call. It shares no code with the package, so agreement between the two is
evidence that the package's generalised layouts, fused permutes and SDPA path are right. The benchmarks use
it as the baseline for "the straightforward math of the official code".

``rule`` is ``"pp"`` (CrossFormer++ / main-branch rule) or ``"v1"`` (v1 dense rule).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
NEG = -1000000.0


def _ln(x: Tensor, p: Mapping[str, Tensor], name: str) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], p[f"{name}.weight"], p[f"{name}.bias"], 1e-5)


def _lin(x: Tensor, p: Mapping[str, Tensor], name: str) -> Tensor:
    return F.linear(x, p[f"{name}.weight"], p.get(f"{name}.bias"))


def _dpb(p: Mapping[str, Tensor], name: str, gh: int, gw: int, dtype: torch.dtype) -> Tensor:
    ys = torch.arange(1 - gh, gh)
    xs = torch.arange(1 - gw, gw)
    offsets = torch.stack(torch.meshgrid([ys, xs], indexing="ij")).flatten(1).transpose(0, 1).contiguous().to(dtype)
    t = _lin(offsets, p, f"{name}.pos_proj")
    for i in (1, 2, 3):
        t = _lin(F.relu(_ln(t, p, f"{name}.pos{i}.0")), p, f"{name}.pos{i}.2")
    coords = torch.stack(torch.meshgrid([torch.arange(gh), torch.arange(gw)], indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
    rel[:, :, 0] += gh - 1
    rel[:, :, 1] += gw - 1
    rel[:, :, 0] *= 2 * gw - 1
    index = rel.sum(-1)
    n = gh * gw
    return t[index.view(-1)].view(n, n, -1).permute(2, 0, 1).contiguous()


def _attention(
    x: Tensor, p: Mapping[str, Tensor], name: str, heads: int, gh: int, gw: int, mask: Tensor | None
) -> Tensor:
    b_, n, c = x.shape
    qkv = _lin(x, p, f"{name}.qkv").reshape(b_, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    q = q * (c // heads) ** -0.5
    attn = q @ k.transpose(-2, -1)
    attn = attn + _dpb(p, f"{name}.pos", gh, gw, x.dtype).unsqueeze(0)
    if mask is not None:
        ng = mask.shape[0]
        attn = attn.view(b_ // ng, ng, heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, heads, n, n)
    attn = attn.softmax(dim=-1)
    out = (attn @ v).transpose(1, 2).reshape(b_, n, c)
    return _lin(out, p, f"{name}.proj")


def block(
    x: Tensor,
    h: int,
    w: int,
    p: Mapping[str, Tensor],
    name: str,
    heads: int,
    group: int,
    interval: int,
    lda: bool,
    rule: str,
) -> Tensor:
    b, _, c = x.shape
    if min(h, w) <= group:
        lda = False
        group = max(h, w) if rule == "pp" else min(h, w)
    shortcut = x
    x = _ln(x, p, f"{name}.norm1").view(b, h, w, c)
    if lda:
        size_div = group * interval if rule == "pp" else interval
    else:
        size_div = group
    pad_r = (size_div - w % size_div) % size_div
    pad_b = (size_div - h % size_div) % size_div
    x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    hp, wp = x.shape[1], x.shape[2]
    m = torch.zeros(1, hp, wp, 1)
    if pad_b:
        m[:, -pad_b:] = -1
    if pad_r:
        m[:, :, -pad_r:] = -1
    if not lda:
        gh = gw = group
        x = x.reshape(b, hp // gh, gh, wp // gw, gw, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, gh * gw, c)
        m = m.reshape(1, hp // gh, gh, wp // gw, gw, 1).permute(0, 1, 3, 2, 4, 5).reshape(-1, 1, gh * gw)
    elif rule == "pp":
        gh = gw = group
        rh, rw, i = hp // (gh * interval), wp // (gw * interval), interval
        x = x.reshape(b, rh, gh, i, rw, gw, i, c).permute(0, 1, 4, 3, 6, 2, 5, 7).reshape(-1, gh * gw, c)
        m = m.reshape(1, rh, gh, i, rw, gw, i, 1).permute(0, 1, 4, 3, 6, 2, 5, 7).reshape(-1, 1, gh * gw)
    else:
        i = interval
        gh, gw = hp // i, wp // i
        x = x.reshape(b, gh, i, gw, i, c).permute(0, 2, 4, 1, 3, 5).reshape(-1, gh * gw, c)
        m = m.reshape(1, gh, i, gw, i, 1).permute(0, 2, 4, 1, 3, 5).reshape(-1, 1, gh * gw)
    mask = None
    if pad_r or pad_b:
        mask = torch.zeros(m.shape[0], gh * gw, gh * gw, dtype=x.dtype).masked_fill(m < 0, NEG)
    x = _attention(x, p, f"{name}.attn", heads, gh, gw, mask)
    if not lda:
        x = x.reshape(b, hp // gh, wp // gw, gh, gw, c).permute(0, 1, 3, 2, 4, 5)
    elif rule == "pp":
        x = x.reshape(b, rh, rw, i, i, gh, gw, c).permute(0, 1, 5, 3, 2, 6, 4, 7)
    else:
        x = x.reshape(b, i, i, gh, gw, c).permute(0, 3, 1, 4, 2, 5)
    x = x.reshape(b, hp, wp, c)[:, :h, :w].reshape(b, h * w, c)
    x = shortcut + x
    y = _lin(F.gelu(_lin(_ln(x, p, f"{name}.norm2"), p, f"{name}.mlp.fc1")), p, f"{name}.mlp.fc2")
    x = x + y
    if f"{name}.ex_conv.weight" in p:
        t = x.view(b, h, w, c).permute(0, 3, 1, 2)
        t = F.conv2d(t, p[f"{name}.ex_conv.weight"], p[f"{name}.ex_conv.bias"], padding=1, groups=c)
        x = _ln(t.permute(0, 2, 3, 1).reshape(b, h * w, c), p, f"{name}.ex_ln")
    return x


def _cross_conv(x: Tensor, p: Mapping[str, Tensor], name: str, stride: int) -> Tensor:
    outs, i = [], 0
    while f"{name}.{i}.weight" in p:
        wgt = p[f"{name}.{i}.weight"]
        k = wgt.shape[-1]
        outs.append(
            F.conv2d(x, wgt, p[f"{name}.{i}.bias"], stride=stride, padding=(k - stride) // 2).flatten(2).transpose(1, 2)
        )
        i += 1
    return torch.cat(outs, dim=2)


def forward(
    p: Mapping[str, Tensor],
    x: Tensor,
    depths: Sequence[int],
    heads: Sequence[int],
    groups: Sequence[int],
    intervals: Sequence[int],
    rule: str = "pp",
    dense: bool = False,
) -> Tensor | list[Tensor]:
    """Classification logits ``[B, classes]`` or (``dense``) the four NCHW stage maps."""
    b = x.shape[0]
    t = _cross_conv(x, p, "patch_embed.projs", 4)
    h, w = x.shape[2] // 4, x.shape[3] // 4
    t = _ln(t, p, "patch_embed.norm")
    feats = []
    for s, depth in enumerate(depths):
        for j in range(depth):
            t = block(t, h, w, p, f"layers.{s}.blocks.{j}", heads[s], groups[s], intervals[s], j % 2 == 1, rule)
        feats.append(t.view(b, h, w, -1).permute(0, 3, 1, 2).contiguous())
        if s < len(depths) - 1:
            c = t.shape[-1]
            t = _ln(t, p, f"layers.{s}.downsample.norm").view(b, h, w, c).permute(0, 3, 1, 2)
            t = _cross_conv(t, p, f"layers.{s}.downsample.reductions", 2)
            h, w = h // 2, w // 2
    if dense:
        return feats
    t = _ln(t, p, "norm").mean(dim=1)
    return _lin(t, p, "head")
