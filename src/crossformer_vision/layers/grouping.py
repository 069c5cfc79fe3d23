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
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import torch

__all__ = ["LDA_RULES", "GroupLayout", "LdaRule", "plan_group_layout"]

LdaRule = Literal["fixed_group", "fixed_interval"]
LDA_RULES: tuple[str, ...] = ("fixed_group", "fixed_interval")


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
        hp, wp = self.padded
        rows = torch.arange(hp, device=device) < self.height
        cols = torch.arange(wp, device=device) < self.width
        valid = (rows[:, None] & cols[None, :]).view(
            self.regions[0], self.group[0], self.interval[0], self.regions[1], self.group[1], self.interval[1]
        )
        return valid.permute(0, 3, 2, 5, 1, 4).reshape(self.num_groups, self.group_tokens)


def _ceil_to(x: int, m: int) -> int:
    return -(-x // m) * m


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
    if min(height, width) <= group_size:
        g = max(height, width) if rule == "fixed_group" else min(height, width)
        hp, wp = _ceil_to(height, g), _ceil_to(width, g)
        return GroupLayout(height, width, (hp // g, wp // g), (g, g), (1, 1), False)
    if not long_distance:
        g = group_size
        hp, wp = _ceil_to(height, g), _ceil_to(width, g)
        return GroupLayout(height, width, (hp // g, wp // g), (g, g), (1, 1), False)
    if rule == "fixed_group":
        span = group_size * interval
        hp, wp = _ceil_to(height, span), _ceil_to(width, span)
        return GroupLayout(
            height, width, (hp // span, wp // span), (group_size, group_size), (interval, interval), True
        )
    hp, wp = _ceil_to(height, interval), _ceil_to(width, interval)
    return GroupLayout(height, width, (1, 1), (hp // interval, wp // interval), (interval, interval), True)


_plan_cached = functools.lru_cache(maxsize=1024)(_plan)
