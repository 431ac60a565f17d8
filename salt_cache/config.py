"""Typed configs from YAML: one place that validates and names what is wrong.

`from_dict(Cls, data)` builds a (nested) dataclass from plain data, checking every field's type
and rejecting unknown fields; errors name the dotted field path and the file. `apply_overrides`
applies `a.b=value` strings (YAML-parsed values) for CLI overrides.

Every command's options are such a dataclass (`BuildConfig`, `ProbeConfig`, `TeacherConfig`,
...), next to the function that takes it: the CLI fills it from flags, a recipe stage from its
YAML fields, so each default is written once. Fields declared with `path_field()` are paths,
which a recipe takes relative to its work dir (`resolve_paths`).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, Union

import yaml

from salt_cache.errors import SaltCacheError


def load_yaml(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise SaltCacheError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise SaltCacheError(f"{path}: not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SaltCacheError(f"{path}: expected a mapping at the top level")
    return data


def from_dict(cls, data: Any, where: str = "", source: str = ""):
    """Build dataclass `cls` from `data`; errors read '<source>: <field.path>: <problem>'."""
    try:
        return _build(cls, data, where)
    except _FieldError as e:
        prefix = f"{source}: " if source else ""
        raise SaltCacheError(f"{prefix}{e.path or '<top>'}: {e.msg}") from None


def load(cls, path: Path, overrides: list[str] | None = None):
    """YAML file (+ 'a.b=value' overrides) -> dataclass `cls`."""
    data = load_yaml(path)
    data = apply_overrides(data, overrides or [])
    return from_dict(cls, data, source=str(path))


def to_dict(obj) -> Any:
    """Dataclass -> plain data (tuples become lists), ready for YAML or JSON."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """['optim.lr=1e-3', 'steps=100'] applied onto nested `data` (a copy)."""
    import copy

    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise SaltCacheError(f"override {item!r}: expected KEY=VALUE (e.g. optim.lr=1e-3)")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw.strip() else None
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise SaltCacheError(f"override {item!r}: {p} is not a section")
        node[parts[-1]] = value
    return data


PATH = "path"  # field metadata key: the field holds a path (or a list of paths)


def path_field(default=dataclasses.MISSING, **kwargs):
    """A dataclass field holding a path or a list of paths (shard folders, patterns)."""
    return dataclasses.field(default=default, metadata={PATH: True}, **kwargs)


def resolve_paths(obj, root: Path):
    """A copy of dataclass `obj` whose `path_field`s that are relative are taken from `root`."""
    def one(v):
        if v is None:
            return None
        if isinstance(v, (list, tuple)):
            return type(v)(one(x) for x in v)
        p = Path(v)
        out = p if p.is_absolute() else Path(root) / p
        return out if isinstance(v, Path) else str(out)
    changes = {f.name: one(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.metadata.get(PATH)}
    return dataclasses.replace(obj, **changes)


def fields_of(obj, cls):
    """The `cls` part of dataclass `obj` (an instance of a subclass of `cls`, or with its fields)."""
    return cls(**{f.name: getattr(obj, f.name) for f in dataclasses.fields(cls) if f.init})


class _FieldError(Exception):
    def __init__(self, path: str, msg: str):
        self.path, self.msg = path, msg


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _build(tp, value, where: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise _FieldError(where, f"expected a mapping, got {type(value).__name__}")
        hints = typing.get_type_hints(tp)
        fields = {f.name: f for f in dataclasses.fields(tp) if f.init}
        unknown = sorted(set(value) - set(fields))
        if unknown:
            close = ", ".join(fields)
            raise _FieldError(_join(where, unknown[0]), f"unknown field (expected one of: {close})")
        kwargs = {}
        for name, f in fields.items():
            if name in value:
                kwargs[name] = _build(hints[name], value[name], _join(where, name))
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise _FieldError(_join(where, name), "required field is missing")
        try:
            return tp(**kwargs)
        except SaltCacheError as e:
            # a validator's "field: problem" is re-rooted under this dataclass's path
            m = re.match(r"^([\w.\[\]]+): (.*)$", str(e).split("; ")[0])
            if m and m.group(1).split(".")[0].split("[")[0] in fields:
                raise _FieldError(_join(where, m.group(1)), m.group(2)) from None
            raise _FieldError(where, str(e)) from None
        except (ValueError, TypeError) as e:
            raise _FieldError(where, str(e)) from None
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _build(a, value, where)
            except _FieldError as e:
                errors.append(e.msg)
        raise _FieldError(where, " or ".join(dict.fromkeys(errors)))
    if origin is typing.Literal:
        if value not in args:
            raise _FieldError(where, f"expected one of {', '.join(repr(a) for a in args)}, got {value!r}")
        return value
    if origin in (tuple,):
        if not isinstance(value, (list, tuple)):
            if len(args) == 2 and args[0] is args[1] and isinstance(value, (int, float)):
                value = [value, value]  # a scalar for a (min, max) pair means a fixed value
            else:
                raise _FieldError(where, f"expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_build(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise _FieldError(where, f"expected {len(args)} values, got {len(value)}")
        return tuple(_build(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin in (list,):
        if not isinstance(value, (list, tuple)):
            raise _FieldError(where, f"expected a list, got {value!r}")
        return [_build(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if origin in (dict,):
        if not isinstance(value, dict):
            raise _FieldError(where, f"expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise _FieldError(where, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise _FieldError(where, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if isinstance(value, str):
                try:
                    return float(value)  # YAML reads 1e-3 (no dot) as a string
                except ValueError:
                    pass
            raise _FieldError(where, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _FieldError(where, f"expected a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, (str, Path)):
            raise _FieldError(where, f"expected a path, got {value!r}")
        return Path(value)
    raise _FieldError(where, f"unsupported config type {tp!r}")
