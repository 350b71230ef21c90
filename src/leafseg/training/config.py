"""Recipe configuration: YAML -> the recipe's dataclass -> ``key=value`` overrides -> resolved config.

    cfg = load_config(UniMatchV2Config, "configs/unimatch_v2/pascal_732.yaml", ["batch_size=2", "seed=1"])
    save_config(cfg, run_dir / "config.yaml")

Override values are parsed as YAML scalars or lists (``lr=5e-6``, ``layers=[2,5,8,11]``,
``out_dir=runs/x``, ``val_split=null``). A dotted key sets one entry of a dict field
(``arch_overrides.num_hidden_layers=4``). Unknown keys are errors that name close matches;
values are checked against the field types, so a typo fails before any work is done.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from pathlib import Path

import yaml


def _field_types(cls) -> dict[str, object]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _check(name: str, value, hint) -> object:
    """``value`` converted to ``hint`` (int -> float allowed) or ValueError naming ``name``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(hint):
            return None
        errors = []
        for arg in typing.get_args(hint):
            if arg is type(None):
                continue
            try:
                return _check(name, value, arg)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError(errors[0] if errors else f"{name}: bad value {value!r}")
    base = origin or hint
    if base is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if base is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if base in (list, tuple) and isinstance(value, list | tuple):
        return list(value)
    if base is dict and isinstance(value, dict):
        return dict(value)
    if base in (str, bool) and isinstance(value, base):
        return value
    if base is str and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"{name}: expected {getattr(base, '__name__', base)}, got {value!r}")


def _unknown(key: str, known) -> ValueError:
    close = difflib.get_close_matches(key, list(known), n=3, cutoff=0.5)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return ValueError(f"unknown config key {key!r}{hint}")


def parse_overrides(overrides: list[str] | None) -> dict:
    """``["a=1", "b.c=x"]`` -> ``{"a": 1, "b.c": "x"}`` (values parsed as YAML)."""
    out = {}
    for text in overrides or []:
        if "=" not in text:
            raise ValueError(f"override {text!r} is not of the form key=value")
        key, raw = text.split("=", 1)
        out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
    return out


def apply_values(cls, base: dict, values: dict, where: str) -> dict:
    """Merge ``values`` into ``base`` (a dict of ``cls`` fields), checking keys and types."""
    types_ = _field_types(cls)
    merged = dict(base)
    for key, value in values.items():
        head, _, rest = key.partition(".")
        if head not in types_:
            raise _unknown(head, types_)
        if rest:
            inner = dict(merged.get(head) or {})
            inner[rest] = value
            value = inner
        try:
            merged[head] = _check(head, value, types_[head])
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
    return merged


def load_config(cls, path: str | os.PathLike | None = None, overrides: list[str] | None = None):
    """An instance of the dataclass ``cls`` from a YAML file (optional) and overrides."""
    values: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping of config keys")
        values = apply_values(cls, {}, loaded, str(path))
    values = apply_values(cls, values, parse_overrides(overrides), "override")
    return cls(**values)


def config_dict(cfg) -> dict:
    """The dataclass as a plain dict (what is saved and recorded)."""
    return dataclasses.asdict(cfg)


def save_config(cfg, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML, atomically (temp file + rename)."""
    from leafseg.files import atomic_write_text

    return atomic_write_text(path, yaml.safe_dump(config_dict(cfg), sort_keys=False))
