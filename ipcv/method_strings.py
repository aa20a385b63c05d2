"""Method strings for the command line and the harness: ``"IPCV:0.35"``, ``"IPCV:0.35:prune_layer=4"``,
``"V2Drop:0.35:layers=3/16/22"``, ``"none"``, parsed into the library's settings objects.

Grammar: ``NAME:KEEP_RATIO[:field=value]...`` or ``none``. NAME is a settings class of the side (the rows of
:data:`ipcv.catalog.METHODS`, case-insensitive); values are ints, floats, ``true`` /
``false``, strings, or tuples of numbers written ``a/b/c``. The settings class validates every value
exactly as the Python API does (same errors); an unknown field is refused with the allowed ones.
"""

from __future__ import annotations

import dataclasses

from .catalog import LANGUAGE, VISION

SIDES: dict[str, dict[str, type]] = {
    "vision": {c.__name__: c for c in VISION},
    "language": {c.__name__: c for c in LANGUAGE},
}


def _value(text: str):
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if "/" in text:
        return tuple(_number(p) for p in text.split("/"))
    try:
        return _number(text)
    except ValueError:
        return text


def _number(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        return float(text)


def parse_method(text: str | None, side: str):
    """The settings object ``text`` names on ``side`` ("vision" or "language"), or None for ``none``."""
    if side not in SIDES:
        raise ValueError(f"side={side!r} is not allowed: use 'vision' or 'language'")
    methods = SIDES[side]
    allowed = ", ".join(["none", *methods])
    if text is None or str(text).strip().lower() in ("", "none"):
        return None
    name, *rest = str(text).strip().split(":")
    cls = {k.lower(): c for k, c in methods.items()}.get(name.strip().lower())
    if cls is None:
        raise ValueError(f"{side}={text!r}: unknown {side}-side method {name!r}; allowed: {allowed}")
    if not rest:
        raise ValueError(f"{side}={text!r}: give the keep ratio, e.g. {cls.__name__}:0.35")
    try:
        keep = float(rest[0])
    except ValueError:
        example = f"{cls.__name__}:0.35"
        raise ValueError(f"{side}={text!r}: keep ratio {rest[0]!r} is not a number; write e.g. {example}") from None
    fields = [f.name for f in dataclasses.fields(cls) if f.name != "keep_ratio"]
    options = {}
    for item in rest[1:]:
        key, eq, raw = item.partition("=")
        if not eq or key.strip() not in fields:
            raise ValueError(
                f"{side}={text!r}: {item!r} is not an option of {cls.__name__}; write field=value with a field "
                f"among {', '.join(fields)}"
            )
        try:
            options[key.strip()] = _value(raw.strip())
        except ValueError:
            raise ValueError(f"{side}={text!r}: {item!r}: tuples are written as numbers separated by '/'") from None
    return cls(keep, **options)


def format_method(settings) -> str:
    """The method string of a settings object (``None`` -> ``"none"``); ``parse_method`` inverts it."""
    if settings is None:
        return "none"
    parts = [type(settings).__name__, repr(settings.keep_ratio)]
    defaults = type(settings)(settings.keep_ratio)
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if f.name == "keep_ratio" or value == getattr(defaults, f.name):
            continue
        if isinstance(value, bool):
            value = str(value).lower()
        elif isinstance(value, tuple):
            value = "/".join(repr(v) for v in value)
        parts.append(f"{f.name}={value}")
    return ":".join(parts)
