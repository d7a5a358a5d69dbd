"""One way to check every typed config: the value of each dataclass field must match its
annotation (int, float, bool, str, Literal[...], X | None, list[X]), and counts and sizes have a
lower bound. Configs call `check_types` and `check_at_least` from `__post_init__`, so a bad
value fails where the config is made, naming the field as its flag (--name); the Python API
checks its keyword arguments with `check_argument`, naming them as arguments."""

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


def check_at_least(obj: Any, minimum: int, names: tuple[str, ...], flag_prefix: str = "--") -> None:
    """Raise ConfigError naming the first of the fields `names` of `obj` that is set (not None)
    and below `minimum`: counts and sizes, checked once their types are (`check_types`)."""
    for name in names:
        value = getattr(obj, name)
        if value is not None and value < minimum:
            raise ConfigError(f"{flag_prefix}{name} must be at least {minimum}, got {value!r}")


def check_argument(name: str, value: Any, annotation: Any, minimum: int | None = None) -> None:
    """A Python caller's keyword argument (the API's settings): its type and, for a count, its
    lower bound, in one message that names the argument and what it must be."""
    if matches(value, annotation) and (minimum is None or value is None or value >= minimum):
        return
    want = describe(annotation)
    if minimum is not None:
        want = ("a positive integer" if minimum == 1 else f"an integer >= {minimum}") + \
            (" or null" if matches(None, annotation) else "")
    raise ConfigError(f"{name} must be {want}, got {value!r}")
