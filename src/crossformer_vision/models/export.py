"""``torch.export`` with a symbolic height and width."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["EXPORT_MULTIPLE", "export_dynamic"]

#: Heights and widths of a dynamic export are multiples of the network's stride.
EXPORT_MULTIPLE = 32


def export_dynamic(
    model: nn.Module, example: torch.Tensor, min_size: int = 256, max_size: int = 1344
) -> torch.export.ExportedProgram:
    """Export ``model`` once for every height and width in ``range(min_size, max_size + 1, 32)``.

    The blocks take their plain path under export, whose group layout is integer arithmetic on the sizes, so the
    program keeps H and W symbolic. Exported with ``backed_size_oblivious``: otherwise the exporter asks, for every
    permute and reshape, whether a size is 1 (a stage with a single region of groups) and turns the answer into a
    guard that fixes the number of regions.

    Limit: a stage whose map's short side is at most its group size switches to one group over the whole map (the
    official small-map rule), a branch on the size; 224 (a 7-token last stage for G = 7) is on the other side of it
    from 256, so ``min_size`` must be at least 256 (export 224 separately).

    Args:
        model: A CrossFormer classifier or dense backbone (eval mode).
        example: An image batch [B, C, H, W] with H and W in the range (the batch size stays fixed).
        min_size, max_size: The range of H and W, multiples of 32.

    Raises:
        ValueError: A bound that is not a multiple of 32, ``min_size`` below 256, or an example outside the range.
    """
    if min_size % EXPORT_MULTIPLE or max_size % EXPORT_MULTIPLE or not 256 <= min_size <= max_size:
        raise ValueError(
            f"min_size and max_size must be multiples of {EXPORT_MULTIPLE} with 256 <= min_size <= max_size, "
            f"got {min_size} and {max_size}"
        )
    if example.ndim != 4 or not all(min_size <= s <= max_size and s % 32 == 0 for s in example.shape[-2:]):
        raise ValueError(
            f"the example's height and width must be multiples of 32 in [{min_size}, {max_size}], "
            f"got shape {tuple(example.shape)}"
        )
    lo, hi = min_size // EXPORT_MULTIPLE, max_size // EXPORT_MULTIPLE
    rows, cols = torch.export.Dim("rows", min=lo, max=hi), torch.export.Dim("cols", min=lo, max=hi)
    shapes = ({2: EXPORT_MULTIPLE * rows, 3: EXPORT_MULTIPLE * cols},)
    with torch.fx.experimental._config.patch(backed_size_oblivious=True):
        return torch.export.export(model, (example,), dynamic_shapes=shapes)
