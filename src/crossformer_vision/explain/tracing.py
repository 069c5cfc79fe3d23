"""Recording a forward pass of CrossFormer, timm ViT / DeiT or timm Swin as a list of :class:`StageTrace`.

Each adapter switches the model's attention to the explicit path for the duration of one forward pass and collects
the attention probabilities (still in the autograd graph), the group layout of every block as a token index, and how
every stage's tokens read the previous stage (patch merging) or the image (the stem):

* CrossFormer: :attr:`GroupAttention.attention_records` (an attribute check per call when off); the layout of each
  block comes with its probabilities (SDA, LDA, padding, small-map fallback: whatever the block ran).
* timm ViT / DeiT: one group holding every token (prefix tokens first); the probabilities are the output of each
  ``Attention.attn_drop`` (a forward hook; ``fused_attn`` is turned off meanwhile).
* timm Swin: shifted windows (:func:`window_token_index`); 2 x 2 patch merging at the start of stages 2-4.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from .propagation import BlockTrace, Spread, StageTrace, layout_token_index, window_token_index

__all__ = ["Trace", "conv_spread", "family_of", "network_of", "trace"]


@dataclass
class Trace:
    """A recorded forward pass.

    Args:
        logits: [B, classes] (in the autograd graph).
        stages: The stages in forward order.
        image_size: (H, W) of the input.
        pooled: The head averages the last stage's tokens (CrossFormer, Swin, ViT with ``global_pool="avg"``);
            otherwise it reads the first prefix token (ViT / DeiT's CLS token).
        features: The map the pooled head reads [B, C, h, w] (the normalised last-stage tokens of CrossFormer /
            Swin; a multi-label wrapper's head input); its positions in row-major order are the last stage's tokens
            after the prefix.
        token_shares: The head's split of its logits over those positions, ``[B, C, h, w] -> [B, classes, h, w]``
            (summed over the positions: the logits minus the bias): a linear classifier's ``w_c . f_i / N``, or a
            multi-label head's ``token_logit_shares`` (plain or CSRA). None: the head cannot be split.
    """

    logits: torch.Tensor
    stages: list[StageTrace]
    image_size: tuple[int, int]
    pooled: bool
    features: torch.Tensor | None = None
    token_shares: Callable[[torch.Tensor], torch.Tensor] | None = None

    def blocks(self) -> Iterator[BlockTrace]:
        for stage in self.stages:
            yield from stage.blocks

    def seed(self, targets: torch.Tensor | None = None) -> torch.Tensor:
        """The head's read-out as a row vector over the last stage's tokens [B, N]: the CLS token's one-hot row, or
        the mean over the map's tokens (the pooled-token formulation).

        With ``targets`` [B] (pooled heads only): each token's share of the target's logit (:meth:`logit_shares`),
        its positive part normalised to sum 1. For an average-pooled linear head (logit ``sum_i w_c . f_i / N + b_c``)
        that is ``relu(w_c . f_i)``; for CSRA ``relu(sum_heads s_ci (1/N + lambda a_ci))``.
        """
        last = self.stages[-1]
        B = self.logits.shape[0]
        seed = self.logits.new_zeros(B, last.num_tokens, dtype=torch.float32)
        if self.pooled and targets is not None:
            shares = self.logit_shares()  # [B, classes, N - prefix]
            share = shares[torch.arange(B, device=shares.device), targets.to(shares.device)].float().clamp(min=0)
            seed[:, last.prefix :] = share / share.sum(1, keepdim=True).clamp(min=1e-12)
        elif self.pooled:
            seed[:, last.prefix :] = 1.0 / (last.num_tokens - last.prefix)
        else:
            seed[:, 0] = 1.0
        return seed

    def logit_shares(self) -> torch.Tensor:
        """Every token's share of every class logit [B, classes, N - prefix] (the head's ``token_shares`` of
        ``features``, flattened row-major); ``ValueError`` for heads that cannot be split."""
        if self.features is None or self.token_shares is None:
            raise ValueError("this model's head cannot be split over its tokens")
        return self.token_shares(self.features).flatten(2)


def conv_spread(convs: list[nn.Conv2d]) -> Spread:
    """The :class:`Spread` of convolutions that share a stride, weighted by their output channels."""
    total = sum(c.out_channels for c in convs)
    kernels = [(c.kernel_size[0], c.padding[0], c.out_channels / total) for c in convs]
    return Spread(kernels, convs[0].stride[0])


def network_of(model: nn.Module) -> nn.Module:
    """The attention network of ``model``: itself, or the ``backbone`` of a wrapper (the multi-label task's
    ``MultiLabelNet``: a backbone and a CSRA / average-pool head)."""
    backbone = getattr(model, "backbone", None)
    return backbone if isinstance(backbone, nn.Module) and hasattr(model, "head") else model


def family_of(model: nn.Module) -> str:
    """``"crossformer"``, ``"vit"`` or ``"swin"`` (of the model or of its backbone); ``TypeError`` for others."""
    from timm.models.swin_transformer import SwinTransformer
    from timm.models.vision_transformer import VisionTransformer

    from ..models.crossformer import CrossFormer

    model = network_of(model)

    if isinstance(model, CrossFormer):
        return "crossformer"
    if isinstance(model, VisionTransformer):
        return "vit"
    if isinstance(model, SwinTransformer):
        return "swin"
    raise TypeError(
        f"explanations are written for CrossFormer and timm's VisionTransformer (ViT / DeiT) and SwinTransformer, "
        f"not {type(model).__name__}"
    )


def trace(model: nn.Module, images: torch.Tensor) -> Trace:
    """Run ``model`` on ``images`` [B, 3, H, W] with attention recording on (autograd as the caller set it).

    For a wrapper (:func:`network_of`) the backbone is recorded and the logits are the wrapper's; its head is then
    treated as pooled (the mean over the backbone's last tokens; a multi-label CSRA head adds class-specific attention
    pooling on top of that mean, which the plain pooled seed does not model). A head with ``token_logit_shares`` (the
    multi-label plain and CSRA heads) also gives ``features`` (the map it reads, [B, C, h, w]) and ``token_shares``
    (that method), so that ``relevance_head`` seeds with its exact split of the logit over the tokens.
    """
    family = family_of(model)
    net = network_of(model)
    if net is model:
        return {"crossformer": _trace_crossformer, "vit": _trace_vit, "swin": _trace_swin}[family](net, images, model)
    with _head_input(model) as read:
        tr = {"crossformer": _trace_crossformer, "vit": _trace_vit, "swin": _trace_swin}[family](net, images, model)
    tr.pooled, tr.features, tr.token_shares = True, None, None
    shares = getattr(model.head, "token_logit_shares", None)
    if callable(shares) and read:
        # the map the head reads [B, C, h, w]: its positions in row-major order are the last stage's tokens (ViT: the
        # patch tokens after the prefix), so relevance_head can split the logit over them
        tr.features, tr.token_shares = read[-1], shares
    return tr


@contextmanager
def _head_input(model: nn.Module) -> Iterator[list]:
    """The map a wrapper's head reads ([B, C, h, w]), appended to the yielded list by a forward pre-hook."""
    out: list[torch.Tensor] = []
    hook = model.head.register_forward_pre_hook(lambda m, args: out.append(args[0]))
    try:
        yield out
    finally:
        hook.remove()


# ----------------------------------------------------------------------------------------------------- CrossFormer
@contextmanager
def _crossformer_recording(model: nn.Module) -> Iterator[None]:
    attns = [block.attn for stage in model.layers for block in stage.blocks]
    checkpointing = [stage.grad_checkpointing for stage in model.layers]
    for attn in attns:
        attn.attention_records = []
    for stage in model.layers:  # a checkpointed block would run (and record) twice
        stage.grad_checkpointing = False
    try:
        yield
    finally:
        for attn in attns:
            del attn.attention_records  # back to the class default (None)
        for stage, ckpt in zip(model.layers, checkpointing):
            stage.grad_checkpointing = ckpt


@contextmanager
def _final_tokens(model: nn.Module) -> Iterator[list]:
    """The output of ``model.norm`` (the normalised last-stage map [B, h, w, C] the pooled head reads)."""
    out: list[torch.Tensor] = []
    hook = model.norm.register_forward_hook(lambda m, i, o: out.append(o))
    try:
        yield out
    finally:
        hook.remove()


def _linear_shares(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """An average-pooled linear classifier's split of its logits over the map it pools, ``[B, C, h, w] ->
    [B, classes, h, w]``: ``w_c . f_i / N`` (None for other heads)."""
    head = model.get_classifier()
    if not isinstance(head, nn.Linear) or model.global_pool != "avg":
        return None
    return lambda x: torch.einsum("bchw,kc->bkhw", x, head.weight) / (x.shape[2] * x.shape[3])


def _trace_crossformer(model: nn.Module, images: torch.Tensor, forward: nn.Module) -> Trace:
    with _crossformer_recording(model), _final_tokens(model) as final:
        logits = forward(images)
        stages = []
        for s, stage in enumerate(model.layers):
            blocks = []
            for block in stage.blocks:
                ((layout, attn),) = block.attn.attention_records
                mix = None
                if block.use_acl:
                    mix = Spread([(block.ex_conv.kernel_size[0], block.ex_conv.padding[0], 1.0)], 1)
                blocks.append(BlockTrace(layout_token_index(layout, images.device), attn, mix_after=mix))
            reads = model.patch_embed.projs if s == 0 else model.layers[s - 1].downsample.reductions
            stages.append(StageTrace((layout.height, layout.width), 0, blocks, conv_spread(list(reads))))
    features = final[-1].permute(0, 3, 1, 2)  # [B, h, w, C] -> [B, C, h, w]
    return Trace(logits, stages, tuple(images.shape[-2:]), True, features, _linear_shares(model))


# ------------------------------------------------------------------------------------------------------- timm models
@contextmanager
def _timm_recording(attns: list[nn.Module], on_block: Callable | None = None) -> Iterator[list]:
    """Explicit attention in every module of ``attns`` and a forward hook on its ``attn_drop``; yields the list the
    probabilities are appended to (in call order)."""
    records: list[torch.Tensor] = []
    fused = [a.fused_attn for a in attns]
    hooks = [a.attn_drop.register_forward_hook(lambda m, i, out: records.append(out)) for a in attns]
    for a in attns:
        a.fused_attn = False
    try:
        yield records
    finally:
        for a, f in zip(attns, fused):
            a.fused_attn = f
        for h in hooks:
            h.remove()


def _trace_vit(model: nn.Module, images: torch.Tensor, forward: nn.Module) -> Trace:
    attns = [block.attn for block in model.blocks]
    for a in attns:
        if not hasattr(a, "attn_drop") or not hasattr(a, "fused_attn"):
            raise TypeError(f"ViT block attention {type(a).__name__} has no explicit path to record")
    with _timm_recording(attns) as records:
        logits = forward(images)
    if len(records) != len(attns):
        raise RuntimeError(f"recorded {len(records)} attention maps for {len(attns)} blocks")
    prefix = model.num_prefix_tokens
    ph, pw = model.patch_embed.patch_size
    grid = (images.shape[-2] // ph, images.shape[-1] // pw)
    n = prefix + grid[0] * grid[1]
    index = torch.arange(n, device=images.device)[None]
    blocks = [BlockTrace(index, attn.unsqueeze(1), source=attn) for attn in records]
    stage = StageTrace(grid, prefix, blocks, Spread([(ph, 0, 1.0)], ph))
    return Trace(logits, [stage], tuple(images.shape[-2:]), pooled=model.global_pool != "token")


def _trace_swin(model: nn.Module, images: torch.Tensor, forward: nn.Module) -> Trace:
    blocks = [block for stage in model.layers for block in stage.blocks]
    sizes: list[tuple[int, int]] = []
    pre = [b.register_forward_pre_hook(lambda m, args: sizes.append(tuple(args[0].shape[1:3]))) for b in blocks]
    try:
        with _timm_recording([b.attn for b in blocks]) as records, _final_tokens(model) as final:
            logits = forward(images)
    finally:
        for h in pre:
            h.remove()
    B = images.shape[0]
    patch = model.patch_embed.patch_size[0]
    stages, i = [], 0
    for s, stage in enumerate(model.layers):
        traces = []
        for block in stage.blocks:
            (h, w), attn = sizes[i], records[i]
            index = window_token_index(h, w, tuple(block.window_size), tuple(block.shift_size), images.device)
            traces.append(BlockTrace(index, attn.view(B, index.shape[0], *attn.shape[1:]), source=attn))
            i += 1
        reads = Spread([(patch, 0, 1.0)], patch) if s == 0 else Spread([(2, 0, 1.0)], 2)
        stages.append(StageTrace(sizes[i - 1], 0, traces, reads))
    features = final[-1].permute(0, 3, 1, 2)  # [B, h, w, C] -> [B, C, h, w]
    return Trace(logits, stages, tuple(images.shape[-2:]), True, features, _linear_shares(model))
