"""One type check for every typed config: the value of each dataclass field must match its
annotation (int, float, bool, str, Literal[...], X | None, list[X]). Configs call it from
`__post_init__`, so a wrong type fails where the config is made, naming the field."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from bertforge.errors import ConfigError


def matches(value: Any, annotation: Any) -> bool:
    """Whether `value` fits the type `annotation` (bools are not numbers; ints are floats)."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return True
    if annotation is type(None) or annotation is None:
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, a) for a in typing.get_args(annotation))
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    if origin in (list, tuple):
        args = typing.get_args(annotation)
        return isinstance(value, origin) and (not args or all(matches(v, args[0]) for v in value))
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if dataclasses.is_dataclass(annotation):
        return isinstance(value, annotation)
    return isinstance(value, annotation)


def describe(annotation: Any) -> str:
    """`int | None` -> 'an integer or null', for error messages."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in typing.get_args(annotation))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (list, tuple):
        args = typing.get_args(annotation)
        return f"a list of {describe(args[0])}s" if args else "a list"
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
             type(None): "null"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def check_types(obj: Any, source: str, flag_prefix: str = "--") -> None:
    """Raise ConfigError naming the first field of dataclass `obj` whose value does not fit its
    annotation. `source` names the config in the message (a file or a command)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if not matches(value, hints[f.name]):
            raise ConfigError(f"{source}: {flag_prefix}{f.name} must be {describe(hints[f.name])}, "
                              f"got {value!r}")
