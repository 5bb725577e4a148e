"""A GGUF file's metadata and tensor table, read fast (the tensors' bytes stay memory-mapped).

Why not ``gguf.GGUFReader``: it builds a numpy view for every item of every metadata array, so a
262,144-word vocabulary (three arrays: tokens, scores, types) takes 28 s on 2 cores, all of the
embedded Gemma 3 270M's load time (its dequantisation takes under 1 s). Here the tokenizer arrays
are skipped (only their lengths are kept: the tokenizer is built by transformers, see
:mod:`gemmascope.lm.tokenizer`) and everything else is parsed with ``struct``; the result equals
GGUFReader's (tested). Dequantisation is ``gguf.quants.dequantize`` on the raw bytes.

Layout (little-endian, GGUF v2/v3): ``b"GGUF"``, version u32, tensor count u64, key-value count
u64; each key-value: key (u64 length + UTF-8), value type u32, value (arrays: item type u32, count
u64, items); each tensor: name, n_dims u32, dims u64 x n_dims (fastest-varying first), ggml type
u32, offset u64 from the data section, which starts at the next multiple of ``general.alignment``
(default 32).
"""

from __future__ import annotations

import math
import os
import struct
from typing import Any, NamedTuple

import numpy as np

from gemmascope.lm.weights import CheckpointError

#: Metadata arrays returned as their length only.
COUNT_ONLY = ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type", "tokenizer.ggml.scores")
# GGUF value types -> struct format (8: string, 9: array are handled apart).
_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_NP = {
    0: np.uint8,
    1: np.int8,
    2: np.uint16,
    3: np.int16,
    4: np.uint32,
    5: np.int32,
    6: np.float32,
    7: np.bool_,
    10: np.uint64,
    11: np.int64,
    12: np.float64,
}


# The fewest bytes one array item of each type takes (strings: the u64 length; arrays: type + count).
_MIN_SIZE = {**{t: np.dtype(d).itemsize for t, d in _NP.items()}, 8: 8, 9: 12}
_MAX_NESTING = 16  # arrays of arrays: deeper nesting is corruption (and Python's recursion limit)


class GGUFError(CheckpointError, ValueError):
    """A malformed GGUF file; the message names the file and the field. A :class:`CheckpointError`
    (a checkpoint that cannot be read) and a ValueError (what this reader raised before)."""


class TensorInfo(NamedTuple):
    """name; shape: ggml order (fastest-varying first); qtype: ggml type id; data: raw uint8 bytes."""

    name: str
    shape: tuple[int, ...]
    qtype: int
    data: np.ndarray


class _Cursor:
    """Reads fields in order; every read is bounds-checked and names the field (``what``) it is in."""

    def __init__(self, buf, path: str):
        self.buf, self.pos, self.path, self.what = buf, 0, path, "the header"

    def error(self, msg: str) -> GGUFError:
        return GGUFError(f"{self.path}: {self.what}: {msg} (the file is truncated or corrupt)")

    def need(self, n: int, of: str) -> None:
        """Raises unless ``n`` more bytes are left: a length or count is checked before it is used."""
        if n > len(self.buf) - self.pos:
            raise self.error(f"{of} needs {n} bytes at byte {self.pos}, the file has {len(self.buf)}")

    def take(self, fmt: str):
        size = struct.calcsize(fmt)
        self.need(size, "a field")
        v = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += size
        return v

    def string(self) -> str:
        n = self.take("<Q")
        self.need(n, f"a string of length {n}")
        s = bytes(self.buf[self.pos : self.pos + n]).decode("utf-8", errors="replace")
        self.pos += n
        return s

    def value(self, vtype: int, key: str, depth: int = 0):
        if vtype in _SCALAR:
            return self.take(_SCALAR[vtype])
        if vtype == 8:
            return self.string()
        if vtype != 9:
            raise self.error(f"metadata {key!r} has unknown GGUF value type {vtype}")
        if depth >= _MAX_NESTING:
            raise self.error(f"metadata {key!r} has arrays nested deeper than {_MAX_NESTING}")
        itype, count = self.take("<I"), self.take("<Q")
        self.need(count * _MIN_SIZE.get(itype, 1), f"an array of {count} items of type {itype}")
        if itype in _NP:
            size = np.dtype(_NP[itype]).itemsize * count
            items = np.frombuffer(self.buf, _NP[itype], count, self.pos)
            self.pos += size
            return count if key in COUNT_ONLY else items.tolist()
        if itype == 8:
            if key in COUNT_ONLY:
                for _ in range(count):  # skip: length-prefixed strings
                    n = self.take("<Q")
                    self.need(n, f"a string of length {n}")
                    self.pos += n
                return count
            return [self.string() for _ in range(count)]
        return [self.value(itype, key, depth + 1) for _ in range(count)]  # arrays of arrays


def read(path: str) -> tuple[dict[str, Any], list[TensorInfo]]:
    """(metadata, tensors) of the GGUF file ``path``; tensor bytes are memory-mapped views.

    Raises :class:`GGUFError` naming the file and the field for a missing, empty, truncated or
    corrupt file (every length, count, type, dimension and tensor extent is checked against the
    file's size before it is used), never a half-read result."""
    import gguf

    if not os.path.isfile(path) or os.path.getsize(path) < 24:
        what = "no such file" if not os.path.isfile(path) else f"{os.path.getsize(path)} bytes, too short"
        raise GGUFError(f"{path}: not a GGUF file ({what}; the header alone is 24 bytes)")
    buf = np.memmap(path, dtype=np.uint8, mode="r")
    c = _Cursor(buf, path)
    if bytes(buf[:4]) != b"GGUF":
        raise GGUFError(f"{path}: not a GGUF file (magic {bytes(buf[:4])!r})")
    c.pos = 4
    version, n_tensors, n_kv = c.take("<I"), c.take("<Q"), c.take("<Q")
    if version not in (2, 3):
        raise GGUFError(f"{path}: GGUF version {version} is not supported (2 or 3)")
    c.need(n_kv * 12 + n_tensors * 24, f"{n_kv} metadata entries and {n_tensors} tensors")
    meta: dict[str, Any] = {"GGUF.version": version, "GGUF.tensor_count": n_tensors, "GGUF.kv_count": n_kv}
    for i in range(n_kv):
        c.what = f"metadata entry {i} of {n_kv}"
        key = c.string()
        c.what = f"metadata {key!r}"
        meta[key] = c.value(c.take("<I"), key)
    infos, seen = [], set()
    for i in range(n_tensors):
        c.what = f"tensor {i} of {n_tensors}"
        name = c.string()
        c.what = f"tensor {name!r}"
        n_dims = c.take("<I")
        c.need(8 * n_dims + 12, f"{n_dims} dimensions")
        dims = tuple(c.take("<Q") for _ in range(n_dims))
        qtype, offset = c.take("<I"), c.take("<Q")
        if name in seen:
            raise c.error("a second tensor of this name")
        seen.add(name)
        try:
            block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(qtype)]
        except (ValueError, KeyError):
            raise c.error(f"unknown ggml tensor type {qtype}") from None
        if not dims or 0 in dims:
            raise c.error(f"dimensions {dims}: a tensor has at least one, and none of them 0")
        if dims[0] % block:
            raise c.error(f"first dimension {dims[0]} is not a multiple of the type's block of {block}")
        infos.append((name, dims, qtype, offset, math.prod(dims) // block * type_size))
    align = meta.get("general.alignment", 32)
    if not isinstance(align, int) or isinstance(align, bool) or align < 1:
        raise GGUFError(f"{path}: metadata 'general.alignment' must be a positive integer, got {align!r}")
    start = -(-c.pos // align) * align
    tensors = []
    for name, dims, qtype, offset, nbytes in infos:
        if start + offset + nbytes > len(buf):
            raise GGUFError(
                f"{path}: tensor {name!r}: its data [{start + offset}, {start + offset + nbytes}) runs past "
                f"the end of the file ({len(buf)} bytes; the file is truncated or corrupt)"
            )
        tensors.append(TensorInfo(name, dims, qtype, buf[start + offset : start + offset + nbytes]))
    return meta, tensors


def dequantize(t: TensorInfo) -> np.ndarray:
    """The tensor as float32 in numpy order (ggml's shape reversed)."""
    import gguf

    qtype = gguf.GGMLQuantizationType(t.qtype)
    try:
        w = np.asarray(gguf.quants.dequantize(np.asarray(t.data), qtype), dtype=np.float32)
    except NotImplementedError:  # a valid ggml type that gguf-py cannot dequantise (Q8_1, ...)
        raise GGUFError(
            f"tensor {t.name!r}: ggml type {qtype.name} cannot be dequantised (gguf-py has no dequantiser)"
        ) from None
    return w.reshape([int(x) for x in reversed(t.shape)])
