"""Loading frozen settings dataclasses from YAML/JSON files plus ``key=value`` overrides."""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any, TypeVar

from tandem.errors import ConfigError

T = TypeVar("T")


def setting(default: Any, help: str) -> Any:
    """A dataclass field with its help text, shown by ``describe`` and ``--help`` listings."""
    return dataclasses.field(default=default, metadata={"help": help})


def coerce(name: str, value: Any, typ: Any) -> Any:
    """``value`` as ``typ`` (bool, int, float, str, dict, a list of ints, or an Optional of those), or ConfigError."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        return coerce(name, value, args[0])
    if typ is dict or origin is dict:
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


def parse_overrides(items: list[str]) -> dict[str, str]:
    pairs = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        k, v = item.split("=", 1)
        pairs[k.strip().lstrip("-").replace("-", "_")] = v
    return pairs


def read_settings_file(path: str | Path, section: str | None = None) -> dict[str, Any]:
    text = Path(path).read_text()
    if str(path).endswith(".json"):
        loaded = json.loads(text)
    else:
        import yaml

        loaded = yaml.safe_load(text) or {}
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
    values.update(overrides or {})
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(f"unknown setting(s) {unknown}; known: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    return cls(**{k: coerce(k, v, hints[k]) for k, v in values.items()})


def describe(cls) -> str:
    """Every field with its default and help text."""
    out = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        out.append(f"{f.name} = {default!r}: {f.metadata.get('help', '')}")
    return "\n".join(out)
