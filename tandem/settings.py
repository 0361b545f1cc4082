"""Loading frozen settings dataclasses from YAML/JSON files plus ``key=value`` overrides."""

from __future__ import annotations

import dataclasses
import json
import logging
import typing
from pathlib import Path
from typing import Any, TypeVar

from tandem.errors import ConfigError

log = logging.getLogger(__name__)

T = TypeVar("T")


def setting(default: Any, help: str) -> Any:
    """A dataclass field with its help text, shown by ``describe`` and ``--help`` listings."""
    return dataclasses.field(default=default, metadata={"help": help})


def _optional_of(typ: Any) -> Any | None:
    """The type an ``Optional[T]`` / ``T | None`` hint wraps, or None for any other hint."""
    if typing.get_origin(typ) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return next(a for a in typing.get_args(typ) if a is not type(None))
    return None


def _is_mapping(typ: Any) -> bool:
    typ = _optional_of(typ) or typ
    return typ is dict or typing.get_origin(typ) is dict


def coerce(name: str, value: Any, typ: Any) -> Any:
    """``value`` as ``typ`` (bool, int, float, str, dict, a list of ints, or an Optional of those), or ConfigError."""
    origin = typing.get_origin(typ)
    inner = _optional_of(typ)
    if inner is not None:
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        return coerce(name, value, inner)
    if _is_mapping(typ):
        if isinstance(value, str):  # key=value overrides: a YAML/JSON mapping, e.g. "{a: 1, b: 2}"
            import yaml

            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                pass
        if isinstance(value, dict):
            return value
        raise ConfigError(f"{name}: expected a mapping, got {value!r}")
    if typ is list or origin is list:  # a list of integers: YAML [10, 20], or key=value "10,20" / "[10, 20]"
        if isinstance(value, str):
            import yaml

            try:
                value = yaml.safe_load(value if value.strip().startswith("[") else f"[{value}]")
            except yaml.YAMLError:
                pass
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value]
        if isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return list(value)
        raise ConfigError(f"{name}: expected a list of integers, got {value!r}")
    if typ is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "1", "yes"):
            return True
        if str(value).lower() in ("false", "0", "no"):
            return False
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lstrip("-").isdigit():
            return int(value)
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
    elif typ is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, bool):
            return str(value).lower()
    raise ConfigError(f"{name}: expected {getattr(typ, '__name__', typ)}, got {value!r}")


def merge_mapping(name: str, base: dict[str, Any], override: Any) -> dict[str, Any]:
    """An override of a mapping setting (``mine``, ``train``, ...) over the file's mapping, key by key: the keys it
    names replace the file's, the others stay; a key set to null (``mine={denoise_depth: null}``) is dropped, so it
    takes its default again. An override of null (``mine=null``) empties the whole mapping."""
    value = coerce(name, override, dict | None)
    if value is None:
        return {}
    merged = {**base, **value}
    return {k: v for k, v in merged.items() if v is not None}


def parse_overrides(items: list[str]) -> dict[str, str]:
    pairs = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        k, v = item.split("=", 1)
        pairs[k.strip().lstrip("-").replace("-", "_")] = v
    return pairs


def read_settings_file(path: str | Path, section: str | None = None) -> dict[str, Any]:
    from tandem.io import open_text

    with open_text(path) as f:
        text = f.read()
    if not text.strip():
        raise ConfigError(f"{path}: file is empty: expected a mapping of settings (key: value per line)")
    if str(path).endswith(".json"):
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
    else:
        import yaml

        try:
            loaded = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
            raise ConfigError(f"{where}: malformed YAML ({getattr(e, 'problem', None) or e}); expected a mapping "
                              "of settings, key: value per line") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of settings")
    if section and isinstance(loaded.get(section), dict):
        return dict(loaded[section])
    return dict(loaded)


def load_settings(cls: type[T], path: str | Path | None = None, overrides: dict[str, Any] | list[str] | None = None,
                  section: str | None = None) -> T:
    """An instance of dataclass ``cls`` from a file (optional) then overrides; unknown keys or bad types raise."""
    values: dict[str, Any] = read_settings_file(path, section) if path is not None else {}
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    hints = typing.get_type_hints(cls)
    for k, v in (overrides or {}).items():
        values[k] = merge_mapping(k, values[k], v) if _is_mapping(hints.get(k)) and isinstance(values.get(k), dict) \
            else v
    if hasattr(cls, "upgrade"):  # settings as older files wrote them, in today's terms
        values = cls.upgrade(values)
    fields = {f.name for f in dataclasses.fields(cls)}
    for other, name in getattr(cls, "ALIASES", {}).items():  # the spelling another command uses for a setting
        if other in values and name not in values:
            log.info("setting %r is called %r here; using it as %s", other, name, name)
            values[name] = values.pop(other)
    unknown = sorted(set(values) - fields)
    if unknown:
        import difflib

        named = [f"{k} (did you mean {', '.join(difflib.get_close_matches(k, fields, 2))}?)"
                 if difflib.get_close_matches(k, fields, 1) else k for k in unknown]
        raise ConfigError(f"unknown setting(s) {', '.join(named)}; known: {sorted(fields)}")
    return cls(**{k: coerce(k, v, hints[k]) for k, v in values.items()})


def describe(cls) -> str:
    """Every field with its default and help text."""
    out = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        out.append(f"{f.name} = {default!r}: {f.metadata.get('help', '')}")
    return "\n".join(out)
