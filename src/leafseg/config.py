"""One configuration system: YAML files (which may extend a base) -> a typed dataclass -> ``key=value``
overrides. Every recipe, the evaluation harness's protocols, ``leafseg data check`` and the benchmarks
read ``key=value`` text through :func:`parse_key_values`, so a value means the same thing everywhere.

    cfg = load_config(UniMatchV2Config, "configs/unimatch_v2/pascal_92.yaml", ["batch_size=2", "eval.preset=unimatch"])
    print(dump_config(cfg))                      # what `leafseg config` prints and every run saves

``key=value`` text
    The value is read as YAML: ``lr=5e-6`` is a float, ``layers=[2,5,8,11]`` a list, ``synthetic={train: 64}``
    a mapping, ``val_split=null`` None, ``out_dir=runs/x`` a string. An empty value (``key=``) is None,
    as an empty YAML value is; write ``key=''`` for the empty string. A dotted key reaches into a section
    or a mapping (``pseudo_masks.k=16``, ``arch_overrides.num_hidden_layers=4``); a mapping value merges
    into the mapping it replaces, key by key.

Files
    A config file is a YAML mapping. ``extends: base.yaml`` (or a list of files, a path relative to the
    file) starts from the base's values; the file's own values are merged over them, mappings key by
    key, so a split config says only what differs from its dataset's base.

Checking
    Every level is typed: nested dataclasses (sections), ``Literal`` choices, ``int``/``float``/``str``/
    ``bool``, ``list[T]``, ``dict[str, T]`` and optional values. Unknown keys and wrong types fail before
    any work is done with a :class:`~leafseg.errors.ConfigError` naming the key path and close matches;
    a dataclass may map renamed keys to their new names in ``RENAMED``.

Why not OmegaConf: its structured configs give the same merge-and-check for plain types, but not
``Literal`` choices or checked values inside ``dict[str, T]``, and its errors name no close matches; the
few dozen lines here keep one set of messages and no extra dependency.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from pathlib import Path

import yaml

from leafseg.errors import ConfigError

__all__ = [
    "config_dict",
    "convert",
    "deep_merge",
    "dump_config",
    "load_config",
    "parse_key_value",
    "parse_key_values",
    "read_config_file",
    "save_config",
    "set_dotted",
    "suggest",
]


# -- key=value text ---------------------------------------------------------------------------
def parse_key_value(text: str) -> tuple[str, object]:
    """``"a.b=1"`` -> ``("a.b", 1)``: the value read as YAML; an empty value is None."""
    key, sep, raw = str(text).partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"{text!r} is not of the form key=value")
    if not raw.strip():
        return key, None
    try:
        return key, yaml.safe_load(raw)
    except yaml.YAMLError as err:
        problem = str(err).splitlines()[0]
        raise ConfigError(f"{key}: cannot read {raw!r} as a YAML value ({problem}); quote text that starts "
                          f"with a bracket: {key}='{raw}'") from None


def parse_key_values(items: list[str] | tuple[str, ...] | None) -> dict:
    """``["a=1", "b.c=x"]`` -> ``{"a": 1, "b.c": "x"}`` (later keys win)."""
    return dict(parse_key_value(item) for item in items or [])


def set_dotted(tree: dict, key: str, value) -> dict:
    """Set ``tree[a][b] = value`` for ``key = "a.b"`` (creating mappings on the way; a mapping merges into
    a mapping already there, key by key, as a config file merges over its base); returns ``tree``."""
    *heads, last = key.split(".")
    node = tree
    for head in heads:
        child = node.get(head)
        if not isinstance(child, dict):
            child = {}
            node[head] = child
        node = child
    if isinstance(value, dict) and isinstance(node.get(last), dict):
        value = deep_merge(node[last], value)
    node[last] = value
    return tree


def deep_merge(base: dict, update: dict) -> dict:
    """``update`` over ``base``: mappings merged key by key, anything else replaced (new dict)."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


# -- files --------------------------------------------------------------------------------------
def read_config_file(path: str | os.PathLike, _seen: tuple[Path, ...] = ()) -> dict:
    """A config file's values with its ``extends`` bases merged under them."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, path.resolve()))
        raise ConfigError(f"config files extend each other in a circle: {chain}")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, got {type(values).__name__}")
    bases = values.pop("extends", None) or []
    merged: dict = {}
    for base in [bases] if isinstance(bases, str) else list(bases):
        merged = deep_merge(merged, read_config_file(path.parent / str(base), (*_seen, path.resolve())))
    return deep_merge(merged, values)


# -- checking -----------------------------------------------------------------------------------
def suggest(key: str, known) -> str:
    """`` (did you mean X?)`` for the known names close to ``key`` (spelling, or its initials), or ''."""
    known = [str(k) for k in known]
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    initials = "".join(part[:1] for part in key.split("_") if part)
    close += [k for k in known if len(initials) > 1 and k == initials and k not in close]
    squashed = {k.replace("_", ""): k for k in known}
    close += [squashed[k] for k in difflib.get_close_matches(key.replace("_", ""), list(squashed), n=2, cutoff=0.75)
              if squashed[k] not in close]
    return f" (did you mean {', '.join(close[:3])}?)" if close else ""


def _type_name(hint) -> str:
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if dataclasses.is_dataclass(hint):
        return f"a mapping of {hint.__name__} keys"
    return getattr(hint, "__name__", str(hint)).replace("NoneType", "null")


def convert(value, hint, where: str):
    """``value`` (plain YAML data) as the type ``hint``, checked at every level; ``where`` names it."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is typing.Any or hint is object:
        return value
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected {_type_name(hint)}, got {value!r}")
        return build_dataclass(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return convert(value, arg, where)
            except ConfigError as err:
                errors.append(err)
        if len(errors) == 1:
            raise errors[0]
        raise ConfigError(f"{where}: expected {_type_name(hint)}, got {value!r}")
    if origin is typing.Literal:
        if value in args:
            return value
        hint_text = suggest(str(value), [str(a) for a in args]) if isinstance(value, str) else ""
        raise ConfigError(f"{where}: must be one of {', '.join(repr(a) for a in args)}, got {value!r}{hint_text}")
    base = origin or hint
    if base is bool and isinstance(value, bool):
        return value
    if base is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if base is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if base is str and isinstance(value, str):
        return value
    if base is str and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if base in (list, tuple) and isinstance(value, list | tuple):
        if base is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
            return [convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))]
        inner = args[0] if args else None
        return [convert(v, inner, f"{where}[{i}]") if inner is not None else v for i, v in enumerate(value)]
    if base is dict and isinstance(value, dict):
        inner = args[1] if len(args) == 2 else None
        return {str(k): convert(v, inner, f"{where}.{k}") if inner is not None else v for k, v in value.items()}
    raise ConfigError(f"{where}: expected {_type_name(hint)}, got {value!r}")


def _unknown(cls, key: str, where: str) -> ConfigError:
    renamed = getattr(cls, "RENAMED", {})
    path = f"{where}.{key}" if where else key
    if key in renamed:
        return ConfigError(f"config key {path!r} is now {renamed[key]!r}")
    names = [f.name for f in dataclasses.fields(cls)]
    return ConfigError(f"unknown config key {path!r}{suggest(key, names)}")


def _default(f: dataclasses.Field):
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def build_dataclass(cls, values: dict, where: str = ""):
    """An instance of the dataclass ``cls`` from a (partial) mapping, every level checked."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise _unknown(cls, str(key), where)
        default = _default(fields[key])
        if isinstance(value, dict) and dataclasses.is_dataclass(default):
            value = deep_merge(dataclasses.asdict(default), value)  # a partial section keeps the field's defaults
        kwargs[key] = convert(value, hints[key], f"{where}.{key}" if where else key)
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where or cls.__name__}: {err}") from None
    return obj


def load_config(cls, path: str | os.PathLike | None = None, overrides: list[str] | dict | None = None):
    """An instance of the dataclass ``cls`` from a YAML file (optional, may ``extends``) and overrides
    (``key=value`` strings or a mapping of dotted keys)."""
    values = read_config_file(path) if path is not None else {}
    items = overrides.items() if isinstance(overrides, dict) else parse_key_values(overrides).items()
    for key, value in items:
        set_dotted(values, key, value)
    return build_dataclass(cls, values)


def config_dict(cfg) -> dict:
    """The config as plain data (what is saved, recorded and printed)."""
    return dataclasses.asdict(cfg)


def dump_config(cfg) -> str:
    """The resolved config as YAML text, sections nested, in field order."""
    return yaml.safe_dump(config_dict(cfg), sort_keys=False, default_flow_style=None, width=110)


def save_config(cfg, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML, atomically."""
    from leafseg.files import atomic_write_text

    return atomic_write_text(path, dump_config(cfg))
