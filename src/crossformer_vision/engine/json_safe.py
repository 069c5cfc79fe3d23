"""Strict JSON for metric reports: non-finite floats (NaN, +-Inf) become ``null``.

Python's ``json`` writes ``NaN`` / ``Infinity`` by default, which jq, JavaScript and other strict parsers reject
(e.g. the accuracy of a class without validation images, the IoU of a class that never occurs).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

__all__ = ["finite_or_none", "strict_json_dumps"]


def finite_or_none(obj: Any) -> Any:
    """``obj`` with every non-finite float (also numpy / 0-d tensor scalars) replaced by None, recursively."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, (str, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    item = getattr(obj, "item", None)  # numpy scalars, 0-d arrays / tensors
    if callable(item) and getattr(obj, "ndim", 0) == 0:
        try:
            return finite_or_none(item())
        except (TypeError, ValueError):
            return obj
    return obj


def strict_json_dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` with non-finite floats written as ``null`` (``allow_nan=False``: the output is strict JSON)."""
    return json.dumps(finite_or_none(obj), allow_nan=False, **kwargs)
