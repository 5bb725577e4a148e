"""Building a config from its ``arg`` string (``--config=configs/sweep_9b.py:width=1m``)."""

from __future__ import annotations

from typing import Any

import ml_collections

from gemmascope.config.checks import ConfigError


def lock(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    c.lock()
    return c


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """``"layer=12,site=res,width=16k"`` -> typed fields, with the types of ``defaults``.

    Widths accept ``16k``/``1m`` suffixes (powers of two: 16k = 16384, 1m = 2**20).
    """
    out = ml_collections.ConfigDict(defaults)
    if not arg:
        return out
    for item in arg.split(","):
        if not item.strip():
            continue
        if "=" not in item:
            if isinstance(defaults.get(item.strip()), bool):  # a bare flag: "runlocal"
                item = item.strip() + "=true"
            else:
                raise ConfigError(f"config arg {item!r}: expected key=value")
        k, v = (s.strip() for s in item.split("=", 1))
        if k not in defaults:
            raise ConfigError(f"config arg {k!r}: unknown key (known: {sorted(defaults)})")
        d = defaults[k]
        if isinstance(d, bool):
            out[k] = v.lower() in ("1", "true", "yes")
        elif isinstance(d, int):
            out[k] = parse_width(v) if k.startswith("width") else int(v)
        elif isinstance(d, float):
            out[k] = float(v)
        else:
            out[k] = v
    return out


def parse_width(v: Any) -> int:
    """``16384``, ``"16k"`` (=16384), ``"1m"`` (=2**20) -> int.

    Gemma Scope's names round powers of two down to thousands (``sae.files.io.width_name``): ``"65k"``
    is 65536, ``"131k"`` 131072, ``"262k"`` 262144, ``"524k"`` 524288, so ``Nk`` is the power of two
    whose thousands are N when ``N * 1024`` is not a power of two itself.
    """
    if isinstance(v, int):
        return v
    s = str(v).strip().lower()
    if s.endswith("k"):
        n = int(s[:-1])
        if n > 0 and (n * 1024) & (n * 1024 - 1):
            p = 1 << (n * 1000 - 1).bit_length()
            if p // 1000 == n:
                return p
        return n * 1024
    if s.endswith("m"):
        return int(s[:-1]) * 1024 * 1024
    return int(s)
