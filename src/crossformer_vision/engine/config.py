"""Run configuration: defaults < YAML file < command-line ``key=value`` overrides; the resolved config is saved.

A config is a nested dict of plain values. Unknown keys are errors (with the closest known key suggested), so a
typo never silently falls back to a default.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import io
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "MAX_CONFIG_BYTES",
    "apply_overrides",
    "config_diff",
    "load_config",
    "merge_config",
    "model_arguments_from",
    "save_config",
]


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


#: A config file larger than this is not read (a config is a few kB; a bigger file is the wrong file).
MAX_CONFIG_BYTES = 10 * 2**20


def _check_type(key: str, default: Any, value: Any, where: str) -> Any:
    """``value`` for the entry ``key`` (dotted) whose default is ``default``, checked: a boolean where the default is
    a boolean, a whole number where it is an int (``2.0`` becomes 2), a number
    where it is a float (None always allowed, and anything where the default is None)."""
    if value is None or default is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{where}: {key} takes true or false, got {value!r}")
    elif isinstance(default, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}: {key} takes a number, got {value!r}")
        if isinstance(default, int) and isinstance(value, float):
            if not value.is_integer():
                raise ValueError(f"{where}: {key} takes a whole number, got {value!r}")
            return int(value)
    return value


def _is_section(default: Any, key: str) -> bool:
    """A section of named settings (``model``, ``train``); ``kwargs`` dicts are free-form arguments instead."""
    return isinstance(default, dict) and bool(default) and key.rsplit(".", 1)[-1] != "kwargs"


def _example(section: Mapping[str, Any]) -> tuple[str, Any]:
    """A setting of ``section`` to show in a message: the first plain one (or the first)."""
    for name, value in section.items():
        if not isinstance(value, dict):
            return name, value
    return next(iter(section.items()))


def _not_a_section(key: str, section: Mapping[str, Any], value: Any, where: str, override: bool) -> ValueError:
    name, default = _example(section)
    shown = "..." if isinstance(default, dict) or default is None else yaml.safe_dump(default, default_flow_style=True)
    shown = shown.strip().removesuffix("...").strip() or "..."
    example = f"{key}.{name}={shown}" if override else f"{key}: {{{name}: {shown}}}"
    return ValueError(
        f"{where}: {key} is a section of settings, not a value (got {value!r}); set its entries, e.g. {example}"
    )


def _not_a_mapping(key: str, value: Any, where: str, override: bool) -> ValueError:
    if override:
        example, clear = f"{key}.<argument>=<value>", f"{key}={{}}"
    else:
        example, clear = f"{key}: {{<argument>: <value>}}", f"{key}: {{}}"
    return ValueError(
        f"{where}: {key} takes a mapping of arguments, got {value!r}; set them with e.g. {example}, or clear it with "
        f"{clear}"
    )


def merge_config(base: Mapping[str, Any], update: Mapping[str, Any], where: str = "config") -> dict[str, Any]:
    """``base`` updated recursively by ``update``; keys absent from ``base`` are refused (free-form ``kwargs`` dicts
    excepted), and so are values of the wrong kind (a value for a section, a fraction for a whole number). A section
    given as null (an empty section in YAML) leaves the section as it is."""
    return _merge(base, update, where, "")


def _merge(base: Mapping[str, Any], update: Mapping[str, Any], where: str, prefix: str) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        name = f"{prefix}{key}"
        if key not in out:
            raise _unknown(str(name), _flatten(out, prefix), where)
        out[key] = _new_value(name, out[key], value, where, override=False)
    return out


def _new_value(name: str, default: Any, value: Any, where: str, *, override: bool) -> Any:
    """``value`` checked against what it replaces: a section is merged key by key (null leaves a file's section as
    it is), a free-form ``kwargs`` takes a mapping, a number a number (YAML 1.1 reads ``3e-4`` as a string)."""
    if _is_section(default, name):
        if value is None and not override:
            return default
        if not isinstance(value, Mapping):
            raise _not_a_section(name, default, value, where, override=override)
        return _merge(default, value, where, f"{name}.")
    if isinstance(default, dict):  # free-form arguments
        if value is not None and not isinstance(value, Mapping):
            raise _not_a_mapping(name, value, where, override=override)
        return copy.deepcopy(value)
    if isinstance(default, (int, float)) and not isinstance(default, bool) and isinstance(value, str):
        value = _parse(value)
    return _check_type(name, default, copy.deepcopy(value), where)


def apply_overrides(cfg: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings (values parsed as YAML: ``3e-4``, ``[1,2]``, ``null``, ``true``); a mapping
    given for a section is merged into it."""
    out = copy.deepcopy(dict(cfg))
    flat = _flatten(out)
    where = "command-line overrides"
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
                raise _unknown(key, flat, where)
            if i == len(parts) - 1:
                node[part] = value if free else _new_value(key, node.get(part), value, where, override=True)
            else:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise ValueError(f"override {key!r}: {'.'.join(parts[: i + 1])} is a value, not a section")
    return out


def _read_config_file(path: Path) -> Any:
    """The YAML document of a config file; every way the file can be wrong is one line naming it."""
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ValueError(
                f"{path} is {size / 2**20:.1f} MB, not a config file (the limit is {MAX_CONFIG_BYTES // 2**20} MB); "
                "pass the YAML run configuration"
            )
        data = path.read_bytes()
    except OSError as err:
        raise ValueError(f"cannot read the config file {path}: {err.strerror or err}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path} is not a text file (byte {err.start} is not UTF-8); pass the YAML run configuration"
        ) from None
    stream = io.StringIO(text)
    stream.name = str(path)  # YAML's error marks then name the file
    try:
        return yaml.safe_load(stream)
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not valid YAML: {' '.join(str(err).split())}") from None
    except RecursionError:
        raise ValueError(f"{path} is not valid YAML: nested too deeply") from None


def load_config(
    defaults: Mapping[str, Any], path: str | Path | None = None, overrides: Iterable[str] = ()
) -> dict[str, Any]:
    """Resolve a run configuration."""
    cfg = copy.deepcopy(dict(defaults))
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        loaded = _read_config_file(path)
        if loaded is None:
            loaded = {}
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
