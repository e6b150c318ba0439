"""Typed settings sections: build a dataclass from a YAML mapping, rejecting unknown or bad keys."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from physmorph.errors import ConfigError

T = TypeVar("T")

# No setting needs a larger magnitude (E of steel is 2e11 Pa); beyond it float32 products
# overflow, so a larger number is a typo, not a request.
MAX_MAGNITUDE = 1e15
# Step, iteration and episode counts, sizes and seeds: beyond 2³¹ − 1 nothing would fit or finish.
MAX_INTEGER = 2**31 - 1


def _describe(value: Any) -> str:
    """A short repr of a YAML value for messages (a whole wrong section can be long)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Convert a YAML value to the annotated type, or raise ConfigError naming `where`."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        last_error: ConfigError | None = None
        for option in args:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except ConfigError as error:
                last_error = error
        raise last_error or ConfigError(f"{where}: unsupported value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{where}: {_describe(value)} is not one of {choices}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {_describe(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} numbers, got {len(value)} ({_describe(value)})")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin in (list, typing.List):  # noqa: UP006
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {_describe(value)}")
        return [_coerce(v, args[0] if args else Any, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, typing.Dict):  # noqa: UP006
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {_describe(value)}")
        return dict(value)
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping of settings, got {_describe(value)}")
        return from_mapping(annotation, value, where)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if annotation is int:
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or (isinstance(value, float) and not value.is_integer())
        ):
            raise ConfigError(f"{where}: expected an integer, got {_describe(value)}")
        if abs(value) > MAX_INTEGER:
            raise ConfigError(
                f"{where}: {_describe(value)} is too large; use an integer of magnitude at most {MAX_INTEGER}"
            )
        return int(value)
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {_describe(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value}")
        if abs(value) > MAX_MAGNITUDE:
            raise ConfigError(
                f"{where}: {_describe(value)} is out of range; numbers of magnitude above {MAX_MAGNITUDE:g} overflow "
                "the simulation (check the units)"
            )
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {_describe(value)}")
        return value
    return value


def from_mapping(
    cls: type[T],
    mapping: Mapping[str, Any] | None,
    section: str,
    accepted_unused: Iterable[str] = (),
    ignored: list[str] | None = None,
) -> T:
    """Build dataclass `cls` from `mapping`, naming `section.key` in every error.

    Keys in `accepted_unused` are legal (for instance settings of the reference system that
    physmorph does not need); they are skipped and, if `ignored` is given, appended to it as
    `section.key` so the caller can report them in one warning. Any other unknown key is an
    error. After construction the dataclass's own `validate()` (if any) runs.
    """
    if mapping is not None and not isinstance(mapping, Mapping):
        name = f"section '{section}'" if section else "the config"
        raise ConfigError(
            f"config {name} must be a mapping of 'key: value' settings, got {type(mapping).__name__} "
            f"{_describe(mapping)}; write it as '{section or 'key'}: {{key: value, ...}}'"
        )
    mapping = dict(mapping or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    accepted = set(accepted_unused)
    kwargs: dict[str, Any] = {}
    for key, value in mapping.items():
        where = f"{section}.{key}" if section else str(key)
        if key in fields:
            kwargs[key] = _coerce(value, hints[key], where)
        elif key in accepted:
            if ignored is not None:
                ignored.append(where)
        else:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"unknown config key '{where}'; known keys here: {known}")
    try:
        instance = cls(**kwargs)
    except TypeError as error:
        raise ConfigError(f"{section}: {error}") from None
    validate: Callable[[], None] | None = getattr(instance, "validate", None)
    if validate is not None:
        try:
            validate()
        except ConfigError as error:
            # nested sections validate without knowing where they sit in the file
            if section and section not in str(error):
                raise ConfigError(f"in '{section}': {error}") from None
            raise
    return instance


def with_overrides(instance: T, section: str, overrides: Mapping[str, Any]) -> T:
    """A copy of dataclass `instance` with the `overrides` that are not None (for instance
    command-line options), coerced and validated like the same keys in a config file."""
    given = {key: value for key, value in overrides.items() if value is not None}
    if not given:
        return instance
    current = {f.name: getattr(instance, f.name) for f in dataclasses.fields(instance) if f.init}
    return from_mapping(type(instance), current | given, section)


def require(condition: bool, key: str, message: str) -> None:
    """Raise ConfigError for `key` with `message` unless `condition` holds."""
    if not condition:
        raise ConfigError(f"config key '{key}' {message}")
