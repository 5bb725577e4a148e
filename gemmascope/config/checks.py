"""The field checks validation is made of: each raises :class:`ConfigError` naming the field
(``config.<field>: <problem>``)."""

from __future__ import annotations

import math


class ConfigError(ValueError):
    """An invalid config value; the message names the field."""


def require(cond: bool, field: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"config.{field}: {msg}")


def positive_int(c, field: str) -> None:
    v = get_field(c, field)
    require(isinstance(v, int) and not isinstance(v, bool) and v > 0, field, f"must be a positive integer, got {v!r}")


def nonneg_number(c, field: str) -> None:
    v = get_field(c, field)
    require(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0,
        field,
        f"must be a finite number >= 0, got {v!r}",
    )


def get_field(c, field: str):
    obj = c
    for part in field.split("."):
        obj = obj[part]
    return obj
