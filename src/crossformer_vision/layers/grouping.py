"""How a token map is cut into attention groups: short-distance (SDA) and long-distance (LDA) groups.

Every layout is described the same way: the padded map of ``Hp x Wp`` tokens is viewed as
``(regions_h, group_h, interval_h) x (regions_w, group_w, interval_w)`` per axis. The tokens that share a
region and an offset modulo the interval form one group of ``group_h x group_w`` tokens, whose members
are ``interval`` apart. SDA is the special case ``interval = 1``; the v1 LDA rule is ``regions = 1``.

Two LDA rules exist in the official code and they disagree at sizes other than 224:

* ``"fixed_group"`` (CrossFormer++ / main branch): groups are always ``G x G``; the map is padded to a
  multiple of ``G*I`` and cut into regions of ``G*I x G*I``. A map whose short side is ``<= G`` becomes one
  SDA group of ``max(H, W)`` squared (global attention).
* ``"fixed_interval"`` (CrossFormer v1 dense code): the interval ``I`` is fixed and there is one group per
  offset spanning the whole map, so groups grow with the map: ``(Hp/I) x (Wp/I)``. A map whose short side
  is ``<= G`` becomes SDA with groups of ``min(H, W)``.

At 224 x 224 (and whenever ``G*I`` covers the map) the two rules give the same groups.

:func:`group_geometry` states both rules as integer arithmetic on the map size alone, in code that TorchScript
compiles and that ``torch.export`` keeps symbolic (only the small-map test is a branch); :func:`plan_group_layout`
wraps its result in a cached :class:`GroupLayout` for the eager path.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import torch

__all__ = [
    "LDA_RULES",
    "Geometry",
    "GroupLayout",
    "LdaRule",
    "group_geometry",
    "plan_group_layout",
    "regroup",
    "valid_keys",
]

LdaRule = Literal["fixed_group", "fixed_interval"]
LDA_RULES: tuple[str, ...] = ("fixed_group", "fixed_interval")

#: ``(regions_h, regions_w, group_h, group_w, interval_h, interval_w)``: a layout as plain integers.
Geometry = tuple[int, int, int, int, int, int]


def _ceil_div(x: int, m: int) -> int:
    return -(-x // m)


def group_geometry(
    height: int, width: int, group_size: int, interval: int, long_distance: bool, fixed_group: bool
) -> tuple[int, int, int, int, int, int]:
    """The groups of one block on a ``height x width`` map as a :data:`Geometry` (see the module docstring).

    Args:
        height, width: Token map size (ints, or symbolic sizes under ``torch.export``).
        group_size: G of the stage.
        interval: I of the stage (LDA only).
        long_distance: LDA block (odd block index) or SDA block (even).
        fixed_group: The ``"fixed_group"`` rule (else ``"fixed_interval"``).
    """
    if min(height, width) <= group_size:  # small map: one SDA group size for the whole map
        g = max(height, width) if fixed_group else min(height, width)
        return _ceil_div(height, g), _ceil_div(width, g), g, g, 1, 1
    if not long_distance:
        return _ceil_div(height, group_size), _ceil_div(width, group_size), group_size, group_size, 1, 1
    if fixed_group:
        span = group_size * interval
        return _ceil_div(height, span), _ceil_div(width, span), group_size, group_size, interval, interval
    return 1, 1, _ceil_div(height, interval), _ceil_div(width, interval), interval, interval


def regroup(x: torch.Tensor, shape: list[int]) -> torch.Tensor:
    """A permuted ``x`` copied into a new contiguous tensor of ``shape`` (the copy ``reshape`` would make).

    Unlike ``reshape``, nothing asks whether a view would do, which depends on which sizes are 1: ``torch.export``
    would turn that question into a branch on the map's size.
    """
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)  # new strides, not derived from x's
    return out.copy_(x).view(shape)


def valid_keys(
    height: int, width: int, geometry: tuple[int, int, int, int, int, int], device: torch.device
) -> torch.Tensor:
    """Which members of each group are real tokens (not padding): bool [num_groups, group_tokens]."""
    rh, rw, gh, gw, ih, iw = geometry
    rows = torch.arange(rh * gh * ih, device=device) < height
    cols = torch.arange(rw * gw * iw, device=device) < width
    valid = (rows[:, None] & cols[None, :]).view(rh, gh, ih, rw, gw, iw)
    return regroup(valid.permute(0, 3, 2, 5, 1, 4), [rh * rw * ih * iw, gh * gw])


@dataclass(frozen=True)
class GroupLayout:
    """Geometry of one block's groups on an ``height x width`` map (all sizes in tokens)."""

    height: int
    width: int
    regions: tuple[int, int]
    group: tuple[int, int]
    interval: tuple[int, int]
    long_distance: bool

    @property
    def geometry(self) -> Geometry:
        return (*self.regions, *self.group, *self.interval)

    @property
    def padded(self) -> tuple[int, int]:
        return tuple(r * g * i for r, g, i in zip(self.regions, self.group, self.interval))  # type: ignore[return-value]

    @property
    def needs_padding(self) -> bool:
        return self.padded != (self.height, self.width)

    @property
    def num_groups(self) -> int:
        return self.regions[0] * self.regions[1] * self.interval[0] * self.interval[1]

    @property
    def group_tokens(self) -> int:
        return self.group[0] * self.group[1]

    def key_valid(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """Which members of each group are real tokens (not padding): bool [num_groups, group_tokens]."""
        return valid_keys(self.height, self.width, self.geometry, torch.device(device))


def plan_group_layout(
    height: int, width: int, group_size: int, interval: int, long_distance: bool, rule: LdaRule
) -> GroupLayout:
    """Groups of one block, exactly as the official code of ``rule`` forms them (cached per shape).

    Args:
        height, width: Token map size.
        group_size: G of the stage.
        interval: I of the stage (LDA only).
        long_distance: LDA block (odd block index) or SDA block (even).
        rule: ``"fixed_group"`` or ``"fixed_interval"`` (see the module docstring).
    """
    # compiled graphs trace the plain function (dynamo warns about lru_cache wrappers)
    plan = _plan if torch.compiler.is_compiling() else _plan_cached
    return plan(height, width, group_size, interval, long_distance, rule)


def _plan(height: int, width: int, group_size: int, interval: int, long_distance: bool, rule: LdaRule) -> GroupLayout:
    if rule not in LDA_RULES:
        raise ValueError(f"unknown LDA rule {rule!r}; expected one of {LDA_RULES}")
    if group_size < 1 or interval < 1:
        raise ValueError(f"group size and interval must be >= 1, got G={group_size}, I={interval}")
    rh, rw, gh, gw, ih, iw = group_geometry(height, width, group_size, interval, long_distance, rule == "fixed_group")
    return GroupLayout(height, width, (rh, rw), (gh, gw), (ih, iw), long_distance and min(height, width) > group_size)


_plan_cached = functools.lru_cache(maxsize=1024)(_plan)
