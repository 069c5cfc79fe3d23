"""``explain(model, images, target, method)``: one class relevance map per image, at input resolution.

Methods (all give ``[B, H, W]`` float maps, larger = more relevant):

* ``relevance`` (Chefer et al., "Generic Attention-model Explainability", ICCV 2021): per block the head mean of
  the positive part of gradient x attention, ``Ā = E_h[(∇A ⊙ A)^+]``, accumulated ``R <- R + Ā R``. Written for
  group attention: each block's group maps are placed in the stage's token matrix by its layout, and the stages are
  composed through the patch merging (a merged token's relevance is spread over the tokens its convolutions read).
  For ViT / DeiT the map is the CLS token's row of ``R`` without the CLS column (the paper's map). CrossFormer and
  Swin have no CLS token but an average-pooled head: their map is the *pooled-token formulation*, the mean of ``R``'s
  rows, minus the identity path (what the map would be if every ``Ā`` were zero: the architecture's own spread of a
  uniform map), just as the CLS row of the identity is zero on the patch tokens.
* ``relevance_head``: the same propagation seeded, for pooled heads, with the positive part of each output token's
  share of the class logit instead of the plain mean (:meth:`.Trace.logit_shares`), and without removing the
  identity path, since the seed is itself class evidence. An average-pooled linear head's logit is exactly
  ``sum_i w_c . f_i / N + b_c``: the seed is ``relu(w_c . f_i)``, the CAM of the last stage. A multi-label CSRA
  head's logit is exactly ``sum_j sum_heads s_cj (1/N + lambda a_cj)`` (``s`` the weight-norm divided class scores,
  ``a`` the attention weights ``softmax_j(T s_cj)``, one-hot at the argmax for T = inf): the seed is
  ``relu(sum_heads s_cj (1/N + lambda a_cj))``, the attention weights read as pooling weights as ``1/N`` is.
  Identical to ``relevance`` for CLS-token models.
* ``rollout`` (Abnar & Zuidema 2020): ``R <- (0.5 I + 0.5 A_mean) R``, composed the same way.
* ``attention``: the head-mean attention of the last block whose groups hold more than one token (ViT: its CLS row;
  pooled models: the mean of its rows), spread to pixels without further attention.
* ``gradcam``: Grad-CAM from jacobgil's ``pytorch-grad-cam`` on the last stage whose map is larger than 1 x 1 (ViT:
  the last block's ``norm1``, CLS token dropped), as its authors document it for transformers.
* ``random``: uniform noise (seeded), the floor every method must beat.

``relevance`` needs one forward and one backward pass (gradients of the attention probabilities only); the
propagation itself works on row vectors (:mod:`.propagation`), so its memory is linear in the tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .propagation import BlockTrace, StageTrace, apply_groups
from .tracing import Trace, family_of, network_of, trace

__all__ = ["METHODS", "explain", "resolve_targets"]

METHODS: tuple[str, ...] = ("relevance", "relevance_head", "rollout", "attention", "gradcam", "random")

Rule = Callable[[int, int, BlockTrace, torch.Tensor], torch.Tensor]


def resolve_targets(target: int | Sequence[int] | torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
    """Class per image, long [B]: the predicted class for ``None``, else ``target`` (one int or one per image)."""
    B = logits.shape[0]
    if target is None:
        return logits.argmax(dim=-1)
    t = torch.as_tensor(target, dtype=torch.long, device=logits.device).flatten()
    if t.numel() == 1:
        t = t.expand(B)
    if t.numel() != B:
        raise ValueError(f"got {t.numel()} targets for {B} images")
    if int(t.min()) < 0 or int(t.max()) >= logits.shape[-1]:
        raise ValueError(f"target class outside [0, {logits.shape[-1]})")
    return t.clone()


def propagate(tr: Trace, seed: torch.Tensor, rule: Rule, pixels: str = "bilinear") -> torch.Tensor:
    """``seed^T`` times the composed token matrices, from the last block back to the pixels: [B, N_last] ->
    [B, H, W].

    ``rule(stage, block, trace, v)`` returns ``v`` times the block's token matrix (for ``relevance``: ``v + v Ā``).
    A block's token mixing without residual (ACL) is applied after it in the forward pass, so before it here; a
    stage's reads (patch merging) map its tokens to the previous map's. Prefix tokens (CLS) are dropped when leaving
    their stage. The first stage's tokens become pixels by bilinear upsampling (``pixels="bilinear"``, what the papers
    do with ViT's patch map), or (``"spread"``) over the pixels the stem's convolutions read: for CrossFormer's 4-32
    pixel stem kernels this blurs the map to the size of the largest kernel.
    """
    v = seed
    B = seed.shape[0]
    for s in reversed(range(len(tr.stages))):
        stage = tr.stages[s]
        for b in reversed(range(len(stage.blocks))):
            block = stage.blocks[b]
            if block.mix_after is not None:
                v = _mix(v, stage, block)
            v = rule(s, b, block, v)
        grid = v[:, stage.prefix :].reshape(B, *stage.size)
        prev = tr.stages[s - 1].size if s > 0 else tr.image_size
        if s == 0 and pixels == "bilinear":
            return F.interpolate(grid[:, None], size=prev, mode="bilinear", align_corners=False)[:, 0]
        v = stage.reads(grid, prev)
        if s > 0:
            v = torch.cat([v.new_zeros(B, tr.stages[s - 1].prefix), v.flatten(1)], dim=1)
    return v


def _mix(v: torch.Tensor, stage: StageTrace, block: BlockTrace) -> torch.Tensor:
    B = v.shape[0]
    grid = block.mix_after(v[:, stage.prefix :].reshape(B, *stage.size), stage.size)
    return torch.cat([v[:, : stage.prefix], grid.flatten(1)], dim=1)


def _identity(s: int, b: int, block: BlockTrace, v: torch.Tensor) -> torch.Tensor:
    return v


def _relevance_rule(s: int, b: int, block: BlockTrace, v: torch.Tensor) -> torch.Tensor:
    if block.grad is None:
        return v
    cam = (block.grad * block.attn).clamp(min=0).mean(dim=2)  # [B, G, n, n]
    return v + apply_groups(v, block.index, cam)


def _rollout_rule(s: int, b: int, block: BlockTrace, v: torch.Tensor) -> torch.Tensor:
    return 0.5 * v + 0.5 * apply_groups(v, block.index, block.attn.mean(dim=2))


def _last_attention_rule(tr: Trace) -> Rule:
    where = [(s, b) for s, st in enumerate(tr.stages) for b, blk in enumerate(st.blocks) if not blk.trivial]
    if not where:
        raise ValueError("the model has no block whose attention groups hold more than one token")
    last = where[-1]

    def rule(s: int, b: int, block: BlockTrace, v: torch.Tensor) -> torch.Tensor:
        return apply_groups(v, block.index, block.attn.mean(dim=2)) if (s, b) == last else v

    return rule


def _token_maps(model: nn.Module, images: torch.Tensor, targets, method: str) -> torch.Tensor:
    grad = method.startswith("relevance")
    with torch.set_grad_enabled(grad):
        tr = trace(model, images)
        tgt = resolve_targets(targets, tr.logits)
        if grad:
            score = tr.logits.gather(1, tgt[:, None]).sum()
            blocks = list(tr.blocks())
            sources = [blk.attn if blk.source is None else blk.source for blk in blocks]
            grads = torch.autograd.grad(score, sources, allow_unused=True)
            for blk, g in zip(blocks, grads):
                blk.grad = None if g is None else g.view(blk.attn.shape)
    with torch.no_grad():
        head_seed = method == "relevance_head" and tr.pooled
        seed = tr.seed(tgt if head_seed else None)
        for blk in tr.blocks():
            blk.attn = blk.attn.detach().float()
            blk.grad = None if blk.grad is None else blk.grad.float()
        if method.startswith("relevance"):
            maps = propagate(tr, seed, _relevance_rule)
            if tr.pooled and not head_seed:  # pooled-token formulation: drop the identity path (module docstring)
                maps = maps - propagate(tr, seed, _identity)
            return maps.clamp(min=0)
        if method == "rollout":
            return propagate(tr, seed, _rollout_rule)
        return propagate(tr, seed, _last_attention_rule(tr))


def _gradcam(model: nn.Module, images: torch.Tensor, targets) -> torch.Tensor:
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    family = family_of(model)
    net = network_of(model)
    if family == "vit":
        prefix = net.num_prefix_tokens
        ph, pw = net.patch_embed.patch_size
        grid = (images.shape[-2] // ph, images.shape[-1] // pw)
        layer = net.blocks[-1].norm1

        def reshape(t: torch.Tensor) -> torch.Tensor:  # [B, N, C] -> [B, C, h, w] without the prefix tokens
            return t[:, prefix:].reshape(t.shape[0], *grid, t.shape[-1]).permute(0, 3, 1, 2)

    else:
        layer = _last_nontrivial_stage_block(net, images)

        def reshape(t: torch.Tensor) -> torch.Tensor:  # [B, H, W, C] -> [B, C, H, W]
            return t.permute(0, 3, 1, 2)

    with torch.no_grad():
        tgt = resolve_targets(targets, model(images))
    with GradCAM(model=model, target_layers=[layer], reshape_transform=reshape) as cam:
        out = cam(input_tensor=images, targets=[ClassifierOutputTarget(int(t)) for t in tgt])
    return torch.as_tensor(out, dtype=torch.float32, device=images.device)


def _last_nontrivial_stage_block(model: nn.Module, images: torch.Tensor) -> nn.Module:
    """The last block of the last stage whose token map is larger than 1 x 1 at this input size."""
    sizes: list[tuple[int, int]] = []
    last_blocks = [stage.blocks[-1] for stage in model.layers]
    hooks = [b.register_forward_hook(lambda m, i, out: sizes.append(tuple(out.shape[1:3]))) for b in last_blocks]
    try:
        with torch.no_grad():
            model(images[:1])
    finally:
        for h in hooks:
            h.remove()
    for block, size in zip(reversed(last_blocks), reversed(sizes)):
        if size[0] * size[1] > 1:
            return block
    return last_blocks[-1]


def explain(
    model: nn.Module,
    images: torch.Tensor,
    target: int | Sequence[int] | torch.Tensor | None = None,
    method: str = "relevance",
    *,
    seed: int = 0,
) -> torch.Tensor:
    """Class relevance maps: [B, 3, H, W] normalised images -> [B, H, W] float32 maps (>= 0, larger = more relevant).

    Args:
        model: A CrossFormer / CrossFormer++ classifier (any variant, any input size) or a timm VisionTransformer
            (ViT, DeiT) or SwinTransformer, in eval mode.
        images: The model's input.
        target: Class to explain: None for the predicted class, an int for all images, or one per image.
        method: One of :data:`METHODS`.
        seed: Seed of the ``random`` maps.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if images.ndim != 4:
        raise ValueError(f"expected an image batch [B, C, H, W], got shape {tuple(images.shape)}")
    family_of(model)
    if model.training:
        raise ValueError("explain() needs the model in eval mode (call model.eval())")
    if method == "random":
        gen = torch.Generator().manual_seed(seed)
        return torch.rand(images.shape[0], *images.shape[-2:], generator=gen).to(images.device)
    if method == "gradcam":
        return _gradcam(model, images, target)
    maps = _token_maps(model, images, target, method)
    return F.relu(maps).float()
