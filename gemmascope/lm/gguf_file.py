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

import struct
from typing import Any, NamedTuple

import numpy as np

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


class TensorInfo(NamedTuple):
    """name; shape: ggml order (fastest-varying first); qtype: ggml type id; data: raw uint8 bytes."""

    name: str
    shape: tuple[int, ...]
    qtype: int
    data: np.ndarray


class _Cursor:
    def __init__(self, buf, path: str):
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, fmt: str):
        v = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return v

    def string(self) -> str:
        n = self.take("<Q")
        s = bytes(self.buf[self.pos : self.pos + n]).decode("utf-8", errors="replace")
        self.pos += n
        return s

    def value(self, vtype: int, key: str):
        if vtype in _SCALAR:
            return self.take(_SCALAR[vtype])
        if vtype == 8:
            return self.string()
        if vtype != 9:
            raise ValueError(f"{self.path}: metadata {key!r} has unknown GGUF value type {vtype}")
        itype, count = self.take("<I"), self.take("<Q")
        if itype in _NP:
            size = np.dtype(_NP[itype]).itemsize * count
            items = np.frombuffer(self.buf, _NP[itype], count, self.pos)
            self.pos += size
            return count if key in COUNT_ONLY else items.tolist()
        if itype == 8:
            if key in COUNT_ONLY:
                for _ in range(count):  # skip: length-prefixed strings
                    self.pos += 8 + struct.unpack_from("<Q", self.buf, self.pos)[0]
                return count
            return [self.string() for _ in range(count)]
        return [self.value(itype, key) for _ in range(count)]  # arrays of arrays


def read(path: str) -> tuple[dict[str, Any], list[TensorInfo]]:
    """(metadata, tensors) of the GGUF file ``path``; tensor bytes are memory-mapped views."""
    import gguf

    buf = np.memmap(path, dtype=np.uint8, mode="r")
    c = _Cursor(buf, path)
    if bytes(buf[:4]) != b"GGUF":
        raise ValueError(f"{path}: not a GGUF file (magic {bytes(buf[:4])!r})")
    c.pos = 4
    version, n_tensors, n_kv = c.take("<I"), c.take("<Q"), c.take("<Q")
    if version < 2:
        raise ValueError(f"{path}: GGUF version {version} is not supported (2 or 3)")
    meta: dict[str, Any] = {"GGUF.version": version, "GGUF.tensor_count": n_tensors, "GGUF.kv_count": n_kv}
    for _ in range(n_kv):
        key = c.string()
        meta[key] = c.value(c.take("<I"), key)
    infos = []
    for _ in range(n_tensors):
        name = c.string()
        dims = tuple(c.take("<Q") for _ in range(c.take("<I")))
        infos.append((name, dims, c.take("<I"), c.take("<Q")))
    align = int(meta.get("general.alignment", 32))
    start = -(-c.pos // align) * align
    tensors = []
    for name, dims, qtype, offset in infos:
        block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(qtype)]
        nbytes = int(np.prod(dims, dtype=np.int64)) // block * type_size
        tensors.append(TensorInfo(name, dims, qtype, buf[start + offset : start + offset + nbytes]))
    return meta, tensors


def dequantize(t: TensorInfo) -> np.ndarray:
    """The tensor as float32 in numpy order (ggml's shape reversed)."""
    import gguf

    qtype = gguf.GGMLQuantizationType(t.qtype)
    w = np.asarray(gguf.quants.dequantize(np.asarray(t.data), qtype), dtype=np.float32)
    return w.reshape([int(x) for x in reversed(t.shape)])
