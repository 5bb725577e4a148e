"""The field checks :func:`gemmascope.config.validate` is made of: each raises
:class:`~gemmascope.config_base.ConfigError` naming the field (``config.<field>: <problem>``)."""

from __future__ import annotations

import math

from gemmascope.config_base import ConfigError


def _require(cond: bool, field: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"config.{field}: {msg}")


def _positive_int(c, field: str) -> None:
    v = _get(c, field)
    _require(isinstance(v, int) and not isinstance(v, bool) and v > 0, field, f"must be a positive integer, got {v!r}")


def _nonneg_number(c, field: str) -> None:
    v = _get(c, field)
    _require(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0,
        field,
        f"must be a finite number >= 0, got {v!r}",
    )


def _get(c, field: str):
    obj = c
    for part in field.split("."):
        obj = obj[part]
    return obj
