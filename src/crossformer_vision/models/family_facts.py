"""Parameters and multiply-adds of SOFT / CMT / AugViT: this package, the official code, the papers.

Counts are per image at each model's official size (SOFT / AugViT 224, CMT its training size), one FLOP = one
multiply-add as the papers count. This package is measured here (``torch.utils.flop_counter`` on the ``meta``
device, divided by 2: every matmul and convolution that runs, attention included); the official code's numbers are
the same counter run on the official code (``tests/data/make_family_fixtures.py``, stored in
``tests/data/family_fixtures.json``; ``tests/test_families.py`` checks that these constants match that file).
"""

from __future__ import annotations

import torch

__all__ = ["FAMILY_NOTES", "FAMILY_PUBLISHED", "OFFICIAL_CODE", "count_gmacs", "family_facts", "family_variants"]

#: name -> (parameters, GMACs) of the official code at its official size (measured, see the module docstring).
OFFICIAL_CODE: dict[str, tuple[int, float]] = {
    "soft_tiny": (13_069_056, 2.2209),
    "soft_small": (38_858_462, 7.7168),
    "soft_medium": (45_812_707, 9.072),
    "soft_large": (64_700_646, 13.7323),
    "soft_huge": (87_108_273, 19.4042),
    "cmt_ti": (9_492_426, 0.6389),
    "cmt_xs": (15_247_208, 1.5469),
    "cmt_s": (26_256_160, 4.0317),
    "cmt_b": (45_715_076, 9.3171),
    "augvit_small": (22_050_664, 4.5989),
    "augvit_small_linear": (25_598_824, 5.2961),
    "augvit_small_circulant2": (22_142_824, 5.9932),
    "augvit_small_linear2": (29_146_984, 5.9932),
    "augvit_base_circulant2": (86_751_976, 23.1412),
}

#: name -> (paper row, params M, GFLOPs, input size); None where the paper has no row for the model.
FAMILY_PUBLISHED: dict[str, tuple[str, float, float, int] | None] = {
    "soft_tiny": ("SOFT-Tiny", 13, 1.9, 224),
    "soft_small": ("SOFT-Small", 24, 3.3, 224),
    "soft_medium": ("SOFT-Medium", 45, 7.2, 224),
    "soft_large": ("SOFT-Large", 64, 11.0, 224),
    "soft_huge": ("SOFT-Huge", 87, 16.3, 224),
    "cmt_ti": ("CMT-Ti", 9.5, 0.6, 160),
    "cmt_xs": ("CMT-XS", 15.2, 1.5, 192),
    "cmt_s": ("CMT-S", 25.1, 4.0, 224),
    "cmt_b": ("CMT-B", 45.7, 9.3, 256),
    "augvit_small": ("ViT(DeiT)-S", 22.1, 4.6, 224),
    "augvit_small_linear": None,
    "augvit_small_circulant2": ("Aug-ViT-S", 22.2, 4.7, 224),
    "augvit_small_linear2": None,
    "augvit_base_circulant2": ("Aug-ViT-B", 86.5, 17.7, 224),
}

#: Where the official code and the paper disagree (shown under the table).
FAMILY_NOTES = (
    "SOFT-Small: the official code's soft_small (depths 1-3-20-4) has 38.86 M parameters, not the paper's 24 M; "
    "no published configuration of the code gives the paper's row.",
    "SOFT: every GFLOPs row of the paper is below what the code executes (2.22 / 7.72 / 9.07 / 13.73 / 19.40 G "
    "counting every matmul and conv); the paper's counter is not published.",
    "CMT-S: 26.26 M parameters in the code (at 224, its size) against the paper's 25.1 M; CMT-Ti / XS / B agree "
    "at their training sizes (160 / 192 / 256). At the official default img_size=224 the code gives "
    "9.71 / 15.38 / 26.26 / 45.51 M (the position biases grow with the input).",
    "AugViT circulant2: the code multiplies a dense C x C matrix gathered from the circulant weights (4 per block), "
    "5.99 G (S) / 23.14 G (B) executed; the paper's 4.7 / 17.7 G presumably count the circulant products at FFT "
    "cost, which the code does not implement. Aug-ViT-B has "
    "86.75 M parameters in the code, 86.5 M in the paper.",
)


def family_variants() -> list[str]:
    """Registered SOFT, CMT and AugViT variants, in paper order."""
    return list(OFFICIAL_CODE)


def count_gmacs(model: torch.nn.Module, img_size: tuple[int, int]) -> float:
    """Multiply-adds (G) of one forward pass of ``model`` (on the meta device) on one ``img_size`` image."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.empty(1, 3, *img_size, device="meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / 2e9


def _official_size(name: str) -> int:
    published = FAMILY_PUBLISHED[name]
    return published[3] if published else 224


def family_facts(name: str, img_size: int | None = None) -> dict[str, float | int | str | None]:
    """Parameters and GMACs of variant ``name`` (this package, official code, paper) at ``img_size``
    (default: the official size; the official and paper columns are only given at that size)."""
    import timm

    size = img_size or _official_size(name)
    with torch.device("meta"):
        model = timm.create_model(name).eval()
    params = sum(p.numel() for p in model.parameters())
    official = OFFICIAL_CODE[name] if size == _official_size(name) else None
    published = FAMILY_PUBLISHED[name] if size == _official_size(name) else None
    return {
        "variant": name,
        "img_size": size,
        "params": params,
        "params_M": round(params / 1e6, 2),
        "official_params": official[0] if official else None,
        "paper_row": published[0] if published else None,
        "paper_params_M": published[1] if published else None,
        "gmacs": round(count_gmacs(model, (size, size)), 4),
        "official_gmacs": official[1] if official else None,
        "paper_gflops": published[2] if published else None,
    }
