"""Group self-attention with the dynamic position bias (the SDA / LDA attention of CrossFormer)."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from timm.layers import use_fused_attn
from torch import nn

from .grouping import GroupLayout, regroup, valid_keys
from .linear import eager_cpu_inference, fused_linear, weights_generation
from .position_bias import DynamicPositionBias
from .recompute import norm_linear, plain_linear

__all__ = ["MASK_VALUE", "GroupAttention", "additive_mask", "padding_mask"]

# The official code adds -1e6 (not -inf) to the scores of padded keys; we keep the value so outputs match.
MASK_VALUE = -1e6
_CACHE_ENTRIES = 4  # group layouts remembered per block for inference (e.g. SDA and LDA at a couple of sizes)


@functools.lru_cache(maxsize=64)
@torch.inference_mode(False)  # cached: must stay usable by autograd, whatever mode first built it
def _padding_mask(layout: GroupLayout, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return additive_mask(layout.key_valid(device), dtype)


def additive_mask(valid: torch.Tensor, dtype: torch.dtype, value: float = MASK_VALUE) -> torch.Tensor:
    """0 where ``valid``, ``value`` (-1e6) elsewhere, in ``dtype`` (same shape as ``valid``)."""
    return torch.zeros(valid.shape, dtype=dtype, device=valid.device).masked_fill_(~valid, value)


def padding_mask(layout: GroupLayout, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Additive mask of padded keys: [num_groups, N] with 0 for real tokens and -1e6 for padding (cached)."""
    if torch.compiler.is_compiling():
        return additive_mask(layout.key_valid(device), dtype)
    return _padding_mask(layout, dtype, torch.device(device))


class GroupAttention(nn.Module):
    """Multi-head self-attention inside each group of a :class:`GroupLayout`.

    ``softmax(q k^T * scale + B + M) v`` where ``B`` is the dynamic position bias of the group shape and
    ``M`` masks padded keys. Queries of padded tokens are never computed; ``qkv`` and ``proj`` run on the
    real tokens only (a padded key has exactly zero weight, so this changes no output).

    Args:
        dim: Channels C.
        num_heads: Heads (C must be divisible by it).
        qkv_bias: Bias in the qkv projection.
        qk_scale: Override of the ``head_dim ** -0.5`` scale.
        attn_drop: Dropout on attention weights.
        proj_drop: Dropout after the output projection.
        fused_attn: Use ``F.scaled_dot_product_attention`` (default: timm's global setting).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        fused_attn: bool | None = None,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        if dim < 16:
            raise ValueError(f"dim {dim} is too small: the position-bias MLP has dim/16 channels, so dim must be >= 16")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale or self.head_dim**-0.5
        self.fused_attn = use_fused_attn() if fused_attn is None else fused_attn
        self.pos = DynamicPositionBias(dim // 16, num_heads)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self._mask_cache: dict = {}

    def attention_mask(self, layout: GroupLayout, dtype: torch.dtype) -> torch.Tensor:
        """Position bias plus padding mask: [heads, N, N], or [num_groups, heads, N, N] with padding.

        Without autograd (inference) the result is cached per group layout and dtype; the key includes the
        position-bias weights' storage and version counters and the optimizer-step counter
        (:func:`~crossformer_vision.layers.linear.weights_generation`), so any change to them (an optimizer step,
        fused or not, ``load_state_dict``, ``.to()``) recomputes it.
        """
        if torch.is_grad_enabled() or torch.compiler.is_compiling() or torch.jit.is_scripting():
            return self._build_mask(layout, dtype)
        if torch.jit.is_tracing():  # the trace records the bias MLP instead of a cached constant
            return self._build_mask(layout, dtype)
        params = ((p.data_ptr(), p._version, p.dtype, p.device) for p in self.pos.parameters())
        key = (layout, dtype, weights_generation(), *params)
        mask = self._mask_cache.get(key)
        if mask is None:
            if len(self._mask_cache) >= _CACHE_ENTRIES:
                self._mask_cache.pop(next(iter(self._mask_cache)))
            mask = self._mask_cache[key] = self._build_mask(layout, dtype)
        return mask

    def _build_mask(self, layout: GroupLayout, dtype: torch.dtype) -> torch.Tensor:
        # the bias MLP runs in its parameters' dtype even under autocast (one rounding to 16 bits, at the end)
        with torch.autocast(self.pos.pos_proj.weight.device.type, enabled=False):
            bias = self.pos(*layout.group).to(dtype)
        if not layout.needs_padding:
            return bias
        return bias.unsqueeze(0) + padding_mask(layout, dtype, bias.device)[:, None, None, :]

    # SDPA without padding: group the C input channels (one copy) instead of the 3C qkv channels (set False to compare)
    _group_tokens_first = True

    def _use_sdpa(self, x: torch.Tensor) -> bool:
        # on CPU, SDPA cannot differentiate a float mask in its fused kernel and falls back to a math path slower than
        # the explicit one: use the fused kernel there only when the position bias needs no gradient
        bias_grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.pos.parameters())
        return self.fused_attn and not (bias_grad and x.device.type == "cpu")

    # The three CPU path choices below were each measured; the numbers are in docs/benchmarks.md, "Kernel choices".
    # On CPU, groups of fewer tokens than this run the explicit path even when SDPA is allowed: SDPA's fused kernel
    # works in blocks whose fixed cost dominates tiny groups (CrossFormer++'s 4x4 groups in stages 1-2).
    cpu_sdpa_min_tokens = 17
    # bfloat16 on CPU: SDPA's fused kernel is slower than explicit math on groups of up to 49 tokens (CrossFormer-S's
    # 7x7 groups). The explicit path rounds the scores to bf16 where SDPA keeps them in float32, without raising the
    # model's error against float32. Larger groups (CrossFormer++'s 196 tokens) stay with SDPA: little is gained
    # explicitly there, and the scores' rounding matters more.
    cpu_bf16_sdpa_min_tokens = 50

    # float32 CPU inference: where SDPA would run and the scores of one group (all heads) fit in a core's L2, the
    # explicit math runs a few groups at a time instead, so the scores never leave the cache (mostly a gain for
    # CrossFormer++'s 196-token groups). Only for calls whose scores add up to at least cpu_blocked_min_bytes: on less
    # (CrossFormer-S at batch 1) the per-block op overhead outweighs it.
    cpu_blocked_attention = True
    cpu_block_bytes = 1 << 18  # scores per block
    cpu_blocked_max_group_bytes = 1 << 21  # larger groups stay with SDPA's flash kernel (it never holds all scores)
    cpu_blocked_min_bytes = 1 << 24

    def _blocked(self, q: torch.Tensor, mask: torch.Tensor) -> int:
        """Groups per block for the blocked CPU path, or 0 where it does not apply."""
        if q.ndim != 4:
            return 0
        bg, heads, n, _ = q.shape
        group_bytes = heads * n * n * q.element_size()
        if not (
            self.cpu_blocked_attention
            and q.dtype == torch.float32
            and mask.ndim == 4
            and mask.shape[0] == 1
            and group_bytes <= self.cpu_blocked_max_group_bytes
            and bg * group_bytes >= self.cpu_blocked_min_bytes
            and not (self.training and self.attn_drop.p > 0)
            and eager_cpu_inference(q)
        ):
            return 0
        return max(1, min(bg, self.cpu_block_bytes // group_bytes))

    def _attend_blocked(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, block: int
    ) -> torch.Tensor:
        """The explicit math ``block`` groups at a time; the result is laid out like SDPA's (token-major)."""
        bg, heads, n, hd = q.shape
        out = q.new_empty(bg, n, heads, hd)
        masks = mask.expand(block, heads, n, n).reshape(block * heads, n, n)  # one copy for all blocks
        for i in range(0, bg, block):
            j = min(i + block, bg)
            rows = (j - i) * heads
            qi, ki, vi = (t[i:j].reshape(rows, n, hd) for t in (q, k, v))
            attn = torch.baddbmm(masks[:rows], qi, ki.transpose(1, 2), alpha=self.scale).softmax(dim=-1)
            out[i:j].copy_(torch.bmm(attn, vi).view(j - i, heads, n, hd).transpose(1, 2))
        return out.transpose(1, 2)

    def _cpu_sdpa_min_tokens(self, dtype: torch.dtype) -> int:
        if dtype == torch.bfloat16:
            return max(self.cpu_sdpa_min_tokens, self.cpu_bf16_sdpa_min_tokens)
        return self.cpu_sdpa_min_tokens

    def _attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, sdpa: bool
    ) -> torch.Tensor:
        """softmax(q k^T * scale + mask) v over [..., N, head_dim] tensors."""
        if sdpa and (q.device.type != "cpu" or q.shape[-2] >= self._cpu_sdpa_min_tokens(q.dtype)):
            block = self._blocked(q, mask)
            if block:
                return self._attend_blocked(q, k, v, mask, block)
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=self.attn_drop.p if self.training else 0.0, scale=self.scale
            )
        # mask + scale * q k^T in one pass (no scaled copy of q kept for the backward pass)
        attn = torch.add(mask, q @ k.transpose(-2, -1), alpha=self.scale)
        return self.attn_drop(attn.softmax(dim=-1)) @ v

    def _forward_grouped_tokens(self, x: torch.Tensor, layout: GroupLayout) -> torch.Tensor:
        """The SDPA path for maps that need no padding, with two copies of C channels instead of 3C + C.

        The normalised tokens are grouped once, ``qkv`` runs on the grouped tokens, q / k / v are strided views of its
        output (SDPA's kernels take strided inputs), SDPA's output is already laid out token-major, so ``proj`` runs on
        it without a copy, and its output is ungrouped once.
        """
        B, H, W, C = x.shape
        (rh, rw), (gh, gw), (ih, iw) = layout.regions, layout.group, layout.interval
        heads, hd = self.num_heads, self.head_dim
        bg, n = B * layout.num_groups, gh * gw
        # [B, H, W, C] -> [B * groups, N, C], groups ordered (rh, rw, ih, iw) and members (gh, gw) like the bias
        x = x.view(B, rh, gh, ih, rw, gw, iw, C).permute(0, 1, 4, 3, 6, 2, 5, 7).reshape(bg, n, C)
        qkv = fused_linear(x, self.qkv)
        q, k, v = qkv.view(bg, n, 3, heads, hd).permute(2, 0, 3, 1, 4).unbind(0)  # [B * groups, heads, N, hd] views
        x = self._attend(q, k, v, self.attention_mask(layout, qkv.dtype).unsqueeze(0), sdpa=True)
        x = fused_linear(x.transpose(1, 2).reshape(bg, n, C), self.proj)
        x = x.view(B, rh, rw, ih, iw, gh, gw, C).permute(0, 1, 5, 3, 2, 6, 4, 7).reshape(B, H, W, C)
        return self.proj_drop(x)

    def forward_plain(self, x: torch.Tensor, geometry: tuple[int, int, int, int, int, int]) -> torch.Tensor:
        """:meth:`forward` in plain ops, for TorchScript and ``torch.export``: [B, H, W, C] normalised tokens ->
        [B, H, W, C].

        The map is always padded and the padding mask always added (zero wide and all zeros where nothing is
        padded), so no branch depends on the map's size and the exporter keeps H and W symbolic; the values are
        those of :meth:`forward` up to float rounding (no oneDNN kernels, no cached masks).

        Args:
            x: Normalised tokens [B, H, W, C].
            geometry: The block's groups (:func:`~crossformer_vision.layers.grouping.group_geometry`).
        """
        B, H, W, C = x.shape
        rh, rw, gh, gw, ih, iw = geometry
        hp, wp = rh * gh * ih, rw * gw * iw
        heads, hd = self.num_heads, self.head_dim
        groups, n = rh * rw * ih * iw, gh * gw
        qkv = F.pad(self.qkv(x), (0, 0, 0, wp - W, 0, hp - H))
        # [B, Hp, Wp, 3C] -> [3, B, groups * heads, N, hd], groups ordered like the padding mask
        qkv = qkv.view(B, rh, gh, ih, rw, gw, iw, 3, heads, hd).permute(7, 0, 1, 4, 3, 6, 8, 2, 5, 9)
        q, k, v = regroup(qkv, [3, B, groups * heads, n, hd]).unbind(0)
        bias = self.pos(gh, gw).to(qkv.dtype)
        pad = additive_mask(valid_keys(H, W, geometry, x.device), qkv.dtype)
        mask = (bias.unsqueeze(0) + pad[:, None, None, :]).reshape(1, groups * heads, n, n)
        if self.fused_attn:
            drop = self.attn_drop.p if self.training else 0.0
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop, scale=self.scale)
        else:
            x = self.attn_drop(torch.add(mask, q @ k.transpose(-2, -1), alpha=self.scale).softmax(dim=-1)) @ v
        x = regroup(x.reshape(B, rh, rw, ih, iw, heads, gh, gw, hd).permute(0, 1, 6, 3, 2, 7, 4, 5, 8), [B, hp, wp, C])
        # cropped by a negative pad, a new contiguous map (a slice's contiguity would be a branch on the size)
        return self.proj_drop(self.proj(F.pad(x, (0, 0, 0, W - wp, 0, H - hp))))

    #: ``crossformer_vision.explain`` sets this (per module) to a list to record the attention probabilities: while it
    #: is not None, :meth:`forward` runs :meth:`_forward_recorded` (explicit math, no fused or blocked kernels) and
    #: appends ``(layout, probabilities [B, groups, heads, N, N])``; the probabilities stay in the autograd graph, so
    #: their gradients can be taken. None (the default) costs the eager path one attribute check per call.
    attention_records = None  # list | None (not annotated: TorchScript would type the attribute)

    def _forward_recorded(self, x: torch.Tensor, layout: GroupLayout, norm: nn.Module | None) -> torch.Tensor:
        """:meth:`forward` by the explicit math, recording the attention probabilities: [B, H, W, C] -> [B, H, W, C]."""
        B, H, W, C = x.shape
        (rh, rw), (gh, gw), (ih, iw) = layout.regions, layout.group, layout.interval
        hp, wp = layout.padded
        heads, hd, groups, n = self.num_heads, self.head_dim, layout.num_groups, gh * gw
        qkv = self.qkv(x if norm is None else norm(x))
        if layout.needs_padding:
            qkv = F.pad(qkv, (0, 0, 0, wp - W, 0, hp - H))
        qkv = qkv.view(B, rh, gh, ih, rw, gw, iw, 3, heads, hd).permute(7, 0, 1, 4, 3, 6, 8, 2, 5, 9)
        q, k, v = qkv.reshape(3, B, groups, heads, n, hd).unbind(0)
        mask = self.attention_mask(layout, qkv.dtype)  # [heads, N, N] or [groups, heads, N, N]: broadcasts over B
        attn = torch.add(mask, q @ k.transpose(-2, -1), alpha=self.scale).softmax(dim=-1)
        self.attention_records.append((layout, attn))
        x = self.attn_drop(attn) @ v
        x = x.reshape(B, rh, rw, ih, iw, heads, gh, gw, hd).permute(0, 1, 6, 3, 2, 7, 4, 5, 8).reshape(B, hp, wp, C)
        return self.proj_drop(self.proj(x[:, :H, :W]))

    def train(self, mode: bool = True) -> GroupAttention:
        self._mask_cache.clear()  # training changes the weights: free what inference cached
        return super().train(mode)

    @torch.jit.unused  # TorchScript takes forward_plain
    def forward(self, x: torch.Tensor, layout: GroupLayout, norm: nn.Module | None = None) -> torch.Tensor:
        """[B, H, W, C] normalised tokens -> [B, H, W, C]; with ``norm``, the tokens are normalised by it first (in
        training the normalised tokens are then recomputed for the backward pass instead of kept)."""
        if self.attention_records is not None:
            return self._forward_recorded(x, layout, norm)
        use_sdpa = self._use_sdpa(x)
        if use_sdpa and self._group_tokens_first and not layout.needs_padding:
            return self._forward_grouped_tokens(x if norm is None else norm(x), layout)
        B, H, W, C = x.shape
        (rh, rw), (gh, gw), (ih, iw) = layout.regions, layout.group, layout.interval
        hp, wp = layout.padded
        heads, hd = self.num_heads, self.head_dim

        qkv = plain_linear(x, self.qkv) if norm is None else norm_linear(x, norm, self.qkv)
        if layout.needs_padding:
            qkv = F.pad(qkv, (0, 0, 0, wp - W, 0, hp - H))
        # one copy: [B, Hp, Wp, 3C] -> [3, B, groups, heads, N, hd]
        qkv = qkv.view(B, rh, gh, ih, rw, gw, iw, 3, heads, hd).permute(7, 0, 1, 4, 3, 6, 8, 2, 5, 9).contiguous()
        groups, n = layout.num_groups, gh * gw
        mask = self.attention_mask(layout, qkv.dtype)
        # 4-D views for SDPA whose mask broadcasts over the batch: [B*groups, heads, ...] with a per-head
        # bias, [B, groups*heads, ...] with a per-group padding mask
        # (a 4-D mask: with a 3-D one torch falls back from the fused CPU kernel to the slow math path)
        if mask.ndim == 3:
            q, k, v = qkv.reshape(3, B * groups, heads, n, hd).unbind(0)
            mask = mask.unsqueeze(0)
        else:
            q, k, v = qkv.reshape(3, B, groups * heads, n, hd).unbind(0)
            mask = mask.reshape(1, groups * heads, n, n)

        x = self._attend(q, k, v, mask, use_sdpa)
        # [B, groups, heads, N, hd] -> [B, Hp, Wp, C], then drop the padding
        x = x.reshape(B, rh, rw, ih, iw, heads, gh, gw, hd).permute(0, 1, 6, 3, 2, 7, 4, 5, 8).reshape(B, hp, wp, C)
        if layout.needs_padding:
            x = x[:, :H, :W]
        return self.proj_drop(plain_linear(x, self.proj))
