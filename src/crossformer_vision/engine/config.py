"""Run configuration: defaults < YAML file < command-line ``key=value`` overrides; the resolved config is saved.

A config is a nested dict of plain values. Unknown keys are errors (with the closest known key suggested), so a
typo never silently falls back to a default.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

__all__ = ["apply_overrides", "config_diff", "load_config", "merge_config", "model_arguments_from", "save_config"]


@contextlib.contextmanager
def model_arguments_from(model_name: str, sources: Mapping[str, Mapping[str, Any] | None]) -> Iterator[None]:
    """Turn a constructor's ``unexpected keyword argument 'x'`` into an error naming the config key that set ``x``.

    ``sources`` maps config sections to the arguments they passed, e.g. ``{"model.kwargs": {...}}``. The usual
    cause is a preset written for another model (``--config seg_demo model.name=semfpn_swin_s`` keeps the preset's
    UPerNet head arguments).
    """
    try:
        yield
    except TypeError as err:
        match = re.search(r"unexpected keyword argument '(\w+)'", str(err))
        arg = match.group(1) if match else None
        keys = [f"{section}.{arg}" for section, args in sources.items() if arg in (args or {})]
        if not keys:
            raise
        section = keys[0].rsplit(".", 1)[0]
        raise ValueError(
            f"{model_name} takes no argument {arg!r}, set by {' and '.join(keys)} (a preset or config made "
            f"for another model?); remove it, or clear the whole section with {section}={{}}"
        ) from None


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


def _check_type(key: str, default: Any, value: Any, where: str) -> None:
    """A number where the default is a number, a boolean where it is a boolean (None always allowed)."""
    if value is None or default is None:
        return
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{where}: {key} takes true or false, got {value!r}")
    elif isinstance(default, (int, float)) and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ValueError(f"{where}: {key} takes a number, got {value!r}")


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
            _check_type(key, base[key], out[key], where)
        else:
            _check_type(key, out[key], value, where)
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
        try:
            value = _parse(raw)
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ValueError(f"override {item!r}: the value is not valid YAML ({problem})") from None
        parts = key.split(".")
        node = out
        for i, part in enumerate(parts):
            free = "kwargs" in parts[:i]  # below a free-form kwargs dict any key is allowed
            if part not in node and not free:
                raise _unknown(key, flat, "command-line overrides")
            if i == len(parts) - 1:
                if not free:
                    _check_type(key, node.get(part), value, "command-line overrides")
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
        try:
            with open(path) as stream:  # a stream: YAML's error marks then name the file
                loaded = yaml.safe_load(stream) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"{path} is not valid YAML: {' '.join(str(err).split())}") from None
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
