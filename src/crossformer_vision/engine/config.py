"""Run configuration: defaults < YAML file < command-line ``key=value`` overrides; the resolved config is saved.

A config is a nested dict of plain values. Unknown keys are errors (with the closest known key suggested), so a
typo never silently falls back to a default.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

__all__ = ["apply_overrides", "config_diff", "load_config", "merge_config", "save_config"]


def _flatten(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _unknown(key: str, known: Iterable[str], where: str) -> ValueError:
    close = difflib.get_close_matches(key, list(known), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ValueError(f"unknown config key {key!r} in {where}{hint}")


def _parse(raw: str) -> Any:
    value = yaml.safe_load(raw) if raw.strip() else None
    if isinstance(value, str):  # YAML 1.1 reads "3e-4" as a string
        try:
            return float(value)
        except ValueError:
            return value
    return value


def merge_config(base: Mapping[str, Any], update: Mapping[str, Any], where: str = "config") -> dict[str, Any]:
    """``base`` updated recursively by ``update``; keys absent from ``base`` are refused (free-form ``kwargs`` dicts
    excepted)."""
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        if key not in out:
            raise _unknown(key, out, where)
        if isinstance(out[key], dict) and isinstance(value, Mapping) and key != "kwargs" and out[key]:
            out[key] = merge_config(out[key], value, f"{where}.{key}")
        elif isinstance(out[key], float) and isinstance(value, str):
            out[key] = _parse(value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_overrides(cfg: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings (values parsed as YAML: ``3e-4``, ``[1,2]``, ``null``, ``true``)."""
    out = copy.deepcopy(dict(cfg))
    flat = _flatten(out)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value (e.g. optim.lr=1e-3)")
        key, raw = item.split("=", 1)
        key = key.strip()
        value = _parse(raw)
        parts = key.split(".")
        node = out
        for i, part in enumerate(parts):
            free = "kwargs" in parts[:i]  # below a free-form kwargs dict any key is allowed
            if part not in node and not free:
                raise _unknown(key, flat, "command-line overrides")
            if i == len(parts) - 1:
                node[part] = value
            else:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise ValueError(f"override {key!r}: {'.'.join(parts[: i + 1])} is a value, not a section")
    return out


def load_config(
    defaults: Mapping[str, Any], path: str | Path | None = None, overrides: Iterable[str] = ()
) -> dict[str, Any]:
    """Resolve a run configuration."""
    cfg = copy.deepcopy(dict(defaults))
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, Mapping):
            raise ValueError(f"{path} must hold a mapping of config sections, got {type(loaded).__name__}")
        cfg = merge_config(cfg, loaded, str(path))
    return apply_overrides(cfg, overrides)


def save_config(cfg: Mapping[str, Any], path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(dict(cfg), sort_keys=False))


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any], keys: Iterable[str] | None = None) -> list[str]:
    """Lines ``key: old -> new`` for the flattened keys that differ (restricted to prefixes in ``keys``)."""
    a, b = _flatten(old), _flatten(new)
    names = sorted(set(a) | set(b))
    if keys is not None:
        prefixes = tuple(keys)
        names = [n for n in names if n.startswith(prefixes)]
    return [
        f"{n}: {a.get(n, '<absent>')!r} (checkpoint) -> {b.get(n, '<absent>')!r} (now)"
        for n in names
        if a.get(n) != b.get(n)
    ]
