"""Argument checks shared by the settings classes: each names the class, the parameter, the value and what is
allowed. Choices are read from the field's ``Literal`` type (:func:`choices`), never written out twice."""

from __future__ import annotations

import functools
import math
import typing
from numbers import Real


def choices(literal) -> tuple:
    """The values a ``Literal[...]`` type allows, in order (``Literal["a", "b"]`` -> ``("a", "b")``)."""
    values = typing.get_args(literal)
    if not values:
        raise TypeError(f"{literal!r} is not a Literal type")
    return values


def check_int(owner: str, name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner}: {name} must be an int, got {type(value).__name__} {value!r}")
    return value


def check_keep_ratio(owner: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{owner}: keep_ratio must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise ValueError(f"{owner}: keep_ratio={value!r} is outside the allowed range (0, 1]")
    return value


def check_choice(owner: str, name: str, value: object, allowed) -> None:
    """``allowed``: a tuple of values or a ``Literal`` type."""
    if not isinstance(allowed, tuple):
        allowed = choices(allowed)
    if value not in allowed:
        raise ValueError(f"{owner}: {name}={value!r} is not allowed: use one of {allowed}")


def check_bool(owner: str, name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{owner}: {name} must be a bool, got {type(value).__name__} {value!r}")
    return value


def check_layers(owner: str, layers: object) -> tuple[int, ...]:
    if isinstance(layers, int) and not isinstance(layers, bool):
        layers = (layers,)
    if not isinstance(layers, (tuple, list)) or not layers:
        raise TypeError(f"{owner}: layers must be a non-empty tuple of ints, got {layers!r}")
    out = tuple(check_int(owner, "layers", x) for x in layers)
    if out[0] < 1 or any(b <= a for a, b in zip(out, out[1:])):
        raise ValueError(f"{owner}: layers={out} is not allowed: they must be increasing and >= 1")
    return out


@functools.cache
def _literal_fields(cls: type) -> dict[str, tuple]:
    hints = typing.get_type_hints(cls)
    return {name: typing.get_args(t) for name, t in hints.items() if typing.get_origin(t) is typing.Literal}


def check_literals(owner: str, settings: object, *names: str) -> None:
    """Check each named field of a settings dataclass against the values its ``Literal`` annotation allows."""
    fields = _literal_fields(type(settings))
    for name in names:
        check_choice(owner, name, getattr(settings, name), fields[name])
