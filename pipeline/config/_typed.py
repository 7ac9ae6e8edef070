"""The one typed checker: a value read from YAML against a type hint, or a dataclass's fields.

Used for ``params.yaml`` and for the scalar fields of study files. A wrong type, an unknown or
missing key, or a value out of its declared bounds raises :class:`UserError` naming where the
value sits (:class:`Where`), the value, and what was expected.
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Mapping
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from pipeline.config._suggest import did_you_mean
from pipeline.config._yaml import Where
from pipeline.errors import UserError


class _UnusableValue(UserError):
    """The right type but unusable (NaN, a NUL character): reported as is, even inside a union."""


def bounds(
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    what: str | None = None,
) -> dict[str, Any]:
    """Field metadata: the value must lie in ``[lo, hi]`` (``(lo, ...`` with ``lo_open``,
    ``..., hi)`` with ``hi_open``).

    ``what`` describes the value in messages ("a validation fraction"); by default the type.
    """
    return {"lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open, "what": what}


def type_name(hint: Any) -> str:
    """How a type is described to a user: ``an integer``, ``one of 'a', 'b'``, ``a mapping``."""
    origin = get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(hint))
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in get_args(hint))
    if hint is type(None):
        return "null"
    if origin is list:
        return f"a list of {type_name(get_args(hint)[0])}"
    if origin is tuple:
        return f"a list of {len(get_args(hint))} {type_name(get_args(hint)[0])}"
    if origin is dict or dataclasses.is_dataclass(hint):
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        hint, str(hint)
    )


def convert(
    value: Any, hint: Any, where: Where, *, complete: bool = False, what: str | None = None
) -> Any:
    """Check ``value`` against the type ``hint``; return it converted (an int to a float).

    Args:
        value: as read from YAML.
        hint: the declared type (scalars, Literal, unions, list, tuple, dict, dataclasses).
        where: the value's place, for messages.
        complete: dataclasses must list every field (their defaults are not used).
        what: describes the expected value in messages instead of the type.
    """
    bad = UserError(f"{where}: expected {what or type_name(hint)}, got {value!r}")
    origin = get_origin(hint)
    if hint is Any:
        return value
    if origin is Literal:
        if value in get_args(hint) and not (isinstance(value, bool) and True in get_args(hint)):
            return value
        raise bad
    if origin in (Union, types.UnionType):
        return _convert_union(value, get_args(hint), where, bad, complete=complete)
    if origin in (list, tuple, dict) or dataclasses.is_dataclass(hint):
        return _convert_container(value, hint, where, bad, complete=complete)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if hint in (int, float):
        return _convert_number(value, hint, where, bad)
    if hint is str:
        if not isinstance(value, str):
            raise bad
        if "\x00" in value:  # paths and names with NUL fail far from the file
            raise _UnusableValue(f"{where}: expected a string without NUL characters")
        return value
    raise TypeError(f"unsupported config type {hint!r} at {where}")


def _convert_union(
    value: Any, args: tuple[Any, ...], where: Where, bad: UserError, *, complete: bool
) -> Any:
    if value is None and type(None) in args:
        return None
    for arg in args:
        if arg is type(None):
            continue
        try:
            return convert(value, arg, where, complete=complete)
        except _UnusableValue:
            raise
        except UserError:
            continue
    raise bad


def _convert_number(value: Any, hint: type, where: Where, bad: UserError) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad
    if hint is int and not isinstance(value, int):
        raise bad
    if isinstance(value, float) and not math.isfinite(value):
        raise _UnusableValue(f"{where}: expected a finite number, got {value!r}")
    return float(value) if hint is float else value


def _convert_container(
    value: Any, hint: Any, where: Where, bad: UserError, *, complete: bool
) -> Any:
    origin, args = get_origin(hint), get_args(hint)
    if origin is list:
        if not isinstance(value, list):
            raise bad
        items = enumerate(value)
        return [convert(v, args[0], where.child(i), complete=complete) for i, v in items]
    if origin is tuple:
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise bad
        pairs = enumerate(zip(value, args, strict=True))
        return tuple(convert(v, a, where.child(i), complete=complete) for i, (v, a) in pairs)
    if not isinstance(value, dict):
        raise bad
    if origin is dict:
        return {
            str(k): convert(v, args[1], where.child(str(k)), complete=complete)
            for k, v in value.items()
        }
    return build(hint, value, where, complete=complete)


def check_bounds(value: Any, meta: Mapping[str, Any], hint: Any, where: Where) -> None:
    """Raise when a number lies outside the field's :func:`bounds`."""
    if meta.get("lo") is None and meta.get("hi") is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        return
    lo, hi, lo_open, hi_open = meta["lo"], meta["hi"], meta["lo_open"], meta.get("hi_open")
    if (lo is None or (value > lo if lo_open else value >= lo)) and (
        hi is None or (value < hi if hi_open else value <= hi)
    ):
        return
    numbers = [a for a in get_args(hint) if a is not type(None)] or [hint]
    what = meta.get("what") or type_name(numbers[0])
    if lo is not None and hi is not None:
        expected = f"{meta.get('what') or 'a value'} in {'(' if lo_open else '['}"
        expected += f"{_number(lo)}, {_number(hi)}{')' if hi_open else ']'}"
    elif lo is not None:
        expected = f"{what} {'>' if lo_open else '≥'} {_number(lo)}"
    else:
        expected = f"{what} {'<' if hi_open else '≤'} {_number(hi)}"
    raise UserError(f"{where}: expected {expected}, got {value!r}")


def _number(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def build(cls: Any, data: Mapping[Any, Any], where: Where, *, complete: bool = False) -> Any:
    """Build the dataclass ``cls`` from a mapping, checking every key and value.

    Raises:
        UserError: an unknown key (with the closest known one), a missing key (any key when
            ``complete``, else one without a default), a wrong type, or a value out of bounds.
    """
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            raise UserError(
                f"{where.child(str(key))}: unknown key" + did_you_mean(str(key), fields)
            )
    kwargs = {}
    for name, f in fields.items():
        at = where.child(name)
        if name in data:
            value = convert(data[name], hints[name], at, complete=complete,
                            what=f.metadata.get("what"))
            check_bounds(value, f.metadata, hints[name], at)
            kwargs[name] = value
        elif complete or (
            f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ):
            raise UserError(f"{at}: missing key (expected {type_name(hints[name])})")
    return cls(**kwargs)
