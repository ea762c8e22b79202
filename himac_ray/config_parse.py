"""Reading a config tree from YAML and `--set a.b=c` overrides into typed dataclasses, generically:
type checks and coercion by annotation, unknown keys with a did-you-mean, duplicate YAML keys refused.
`himac_ray.config` applies it to `TrainConfig`; every failure is a `ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from himac_ray.config_rules import ConfigError


class _NotFinite(ConfigError):
    """A float field got NaN or an infinity."""


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(key: str, value: Any, tp) -> Any:
    """Check `value` against the annotated type `tp` (ints are accepted for floats)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except _NotFinite:
                raise
            except ConfigError:
                pass
        raise ConfigError(f"{key}={value!r} must be one of types {[_type_name(a) for a in args]}")
    if origin is tuple:  # `tuple[X, ...]`: a YAML list
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r} has type {type(value).__name__}; expected a list")
        return tuple(_coerce(f"{key}[{i}]", v, typing.get_args(tp)[0]) for i, v in enumerate(value))
    number = None
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads `1e-6` (no dot) as a string
            number = float(value)
        except ValueError:
            pass
    if number is not None:
        if not math.isfinite(number):
            raise _NotFinite(f"{key}={value!r} must be a finite number")
        return number
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp in (bool, str, dict) and isinstance(value, tp):
        return value
    raise ConfigError(f"{key}={value!r} has type {type(value).__name__}; expected {_type_name(tp)}")


def field_values(cls, data: dict, prefix: str) -> dict:
    """The keyword arguments of dataclass `cls` from mapping `data` (keys under `prefix`), checked and
    coerced; a nested dataclass field is built from its own mapping (empty or None = its defaults)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            raise ConfigError(f"unknown config key {full!r}{hint}; allowed keys under {prefix or 'top level'}: {names}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):  # an empty YAML section (`sft:`) keeps the defaults
            kwargs[key] = tp(**field_values(tp, {} if value is None else value, f"{full}."))
        else:
            kwargs[key] = _coerce(full, value, tp)
    return kwargs


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=c` -> (["a", "b"], YAML-parsed c)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: cannot parse value {raw!r}: {err}") from None
    return key.strip().split("."), value


def _is_section(root, path: list[str]) -> bool:
    """Whether the dotted `path` under dataclass `root` names a section (a nested dataclass), not a value."""
    cls = root
    for part in path:
        hints = typing.get_type_hints(cls) if dataclasses.is_dataclass(cls) else {}
        if part not in hints:
            return False
        cls = hints[part]
    return dataclasses.is_dataclass(cls)


def apply_overrides(data: dict, overrides: list[str], *, root) -> dict:
    """`data` (a nested mapping for dataclass `root`) with each `a.b=c` override set in place."""
    for text in overrides or []:
        path, value = parse_override(text)
        if _is_section(root, path) and not isinstance(value, dict):
            key = ".".join(path)
            raise ConfigError(f"override {text!r}: {key} must be a mapping (it is a section: set its keys, "
                              f"e.g. {key}.KEY=VALUE, or give {key}={{KEY: VALUE}})")
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {part} is not a section")
        node[path[-1]] = value
    return data


def read_yaml_mapping(path: str | Path) -> dict:
    """The mapping of sections in a YAML config file ({} for an empty file); ConfigError otherwise."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist (see configs/ for examples)")
    if not path.is_file():
        raise ConfigError(f"config file {path} is not a file (pass a YAML file, e.g. configs/sokoban_tiny.yaml)")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {path} is not UTF-8 text: {err}") from None
    except OSError as err:
        raise ConfigError(f"config file {path} cannot be read: {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    except ConfigError as err:  # a duplicate key
        raise ConfigError(f"config file {path}: {err}") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections (model:, algorithm:, ...), "
                          f"not a {type(data).__name__}: {_clip_repr(data)}")
    return data


def _clip_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a key given twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:  # the keys written in this mapping (`<<` merges may be overridden)
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            if key_node.value in seen:
                raise ConfigError(f"duplicate key {key_node.value!r} in one mapping{key_node.start_mark}")
            seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)
