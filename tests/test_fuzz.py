"""Malformed files: every file loader we expose, fed seeded mutations of a valid file, either loads
a complete, valid object or raises its named error naming the file (SAEFileError, StoreError,
ConfigError, GGUFError); never another exception type, never a hang.

Why: a damaged download, a truncated copy or a hand-edited JSON must fail when it is loaded, with
a message that names the file and the field, not later inside training with a KeyError or a shape
error, and never as half an SAE. Fuzzing finds the cases nobody thought to write a test for.

Targets, one valid input each, written by our own writers: ``params.npz`` + ``metadata.json``
(JumpReLU, TopK, a released file without metadata), Gemma Scope 2 folders (SAE, affine
transcoder), SAELens folders (jumprelu, topk) through ``load_params`` and ``load_metadata``; a
tiny GGUF (every value type, f32 / f16 / q8_0 tensors, ``general.alignment``) through
``gguf_file.read``; an activation store's JSON files through ``open_store``; a workdir's
``config.json`` through ``load_saved``.

Mutations (numpy RNG seeded by (seed, target, index): a failure names the seed that replays it):
bytes (truncate, flip, insert, delete, an interesting integer over 1 to 8 bytes, empty file,
file removed); JSON structure (drop a key, a value of another type, unknown keys, nested garbage,
a non-object document); store JSON files re-checksummed, so the change reaches the checks behind
the checksum; safetensors header length and header JSON; ``params.npz`` arrays (dropped,
renamed, reshaped, other dtypes, NaN, bad threshold or k) with ``params_sha256`` updated; GGUF
integer fields (counts, lengths, value types, dims, tensor types, offsets, alignment).

``python bench/bench_fuzz.py --mutations=N`` runs the same targets with many more mutations.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import io
import json
import os
import re
import signal
import struct
import time
import traceback
import zlib
from collections import Counter
from collections.abc import Callable
from typing import Any

import gguf
import ml_collections
import numpy as np
import pytest

import gemmascope.config as config_lib
from gemmascope.config import files as config_files
from gemmascope.config.experiments import demo
from gemmascope.data import store as st
from gemmascope.data.store.layout import CHECKSUM_KEY
from gemmascope.lm import gguf_file
from gemmascope.sae.files import formats
from gemmascope.sae.files import io as sae_io

D, N, D_OUT = 6, 10, 5  # d_in, d_sae, a transcoder's d_out
SAE_KEYS = {"W_enc", "W_dec", "b_enc", "b_dec", "threshold", "k", "W_skip"}
JUNK = (
    None,
    True,
    False,
    0,
    -1,
    1,
    3,
    2**31,
    2**64,
    -(10**30),
    0.5,
    -2.5,
    1e308,
    float("nan"),
    float("inf"),
    "",
    "x",
    "jumprelu",
    "none",
    "F16",
    "../..",
    "é\x00",
    [],
    [0],
    [1, 2, 3],
    ["a"],
    [[None]],
    {},
    {"a": 1},
    {"": {"x": [{}]}},
)
INTERESTING = (0, 1, 2, 7, 8, 9, 12, 13, 31, 32, 33, 127, 128, 255, 256, 65535, 2**31 - 1, 2**31, 2**32 - 1)


class Hang(BaseException):
    """A loader ran past the per-case time limit (BaseException: no loader's ``except Exception``
    may turn it into a named error)."""


@dataclasses.dataclass(frozen=True)
class Target:
    """One loader on one valid input: ``make(folder)`` writes the input and returns its files as
    ``[(path relative to folder, kind)]``; ``load(folder)`` is the loader; ``check(result, folder)``
    asserts the result is complete and valid; ``errors``: the named errors it may raise."""

    name: str
    make: Callable[[str], list[tuple[str, str]]]
    load: Callable[[str], Any]
    check: Callable[[Any, str], None]
    errors: tuple[type[BaseException], ...]


@dataclasses.dataclass
class Report:
    """Outcomes of one target's mutations: counts by outcome, and every bug with its replay."""

    name: str
    counts: Counter = dataclasses.field(default_factory=Counter)
    bugs: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0


# ------------------------------------------------------------------------------------------------
# Mutations


def mutate_bytes(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    """One byte-level damage: truncate, flip, insert, delete, an interesting integer, or empty."""
    n = len(data)
    op = rng.choice(["truncate", "flip", "insert", "delete", "int", "empty"], p=[0.2, 0.3, 0.15, 0.15, 0.15, 0.05])
    if op == "empty" or n == 0:
        return b"", "bytes empty"
    pos = int(rng.integers(0, n))
    if op == "truncate":
        return data[:pos], f"bytes truncate at {pos}/{n}"
    if op == "flip":
        out = bytearray(data)
        where = rng.integers(0, n, size=int(rng.integers(1, 9)))
        for p in where:
            out[p] ^= int(rng.integers(1, 256))
        return bytes(out), f"bytes flip at {sorted(int(p) for p in where)}"
    if op == "insert":
        pool = [b"{", b"}", b"[", b'"', b",", b":", b"\x00", b"\xff", b"\\", b"9", b"-", b"e"]
        if rng.random() < 0.5:
            junk = b"".join(pool[int(i)] for i in rng.integers(0, len(pool), int(rng.integers(1, 6))))
        else:
            junk = rng.integers(0, 256, int(rng.integers(1, 17))).astype(np.uint8).tobytes()
        return data[:pos] + junk + data[pos:], f"bytes insert {junk!r} at {pos}"
    if op == "delete":
        k = int(rng.integers(1, 17))
        return data[:pos] + data[pos + k :], f"bytes delete [{pos}, {pos + k})"
    size = int(rng.choice([1, 2, 4, 8]))
    value = int(rng.choice(INTERESTING)) if rng.random() < 0.7 else int(rng.integers(0, 2**62))
    value = (value if rng.random() < 0.8 else -value) % (1 << (8 * size))
    return data[:pos] + value.to_bytes(size, "little") + data[pos + size :], f"bytes int {value} ({size} B) at {pos}"


def _paths(obj: Any, path: tuple = ()) -> list[tuple]:
    out = [path]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, path + (i,))
    return out


def _strings(obj: Any) -> list[str]:
    if isinstance(obj, dict):
        return [s for k, v in obj.items() for s in [k, *_strings(v)]]
    if isinstance(obj, list):
        return [s for v in obj for s in _strings(v)]
    return [obj] if isinstance(obj, str) else []


def _garbage(rng: np.random.Generator, depth: int = 0) -> Any:
    r = rng.random()
    if depth >= 3 or r < 0.4:
        return JUNK[int(rng.integers(0, len(JUNK)))]
    if r < 0.7:
        return [_garbage(rng, depth + 1) for _ in range(int(rng.integers(0, 4)))]
    return {f"g{i}": _garbage(rng, depth + 1) for i in range(int(rng.integers(0, 4)))}


def mutate_json(doc: Any, rng: np.random.Generator, vocab: tuple[str, ...] = ()) -> tuple[Any, str]:
    """One structural change of a parsed JSON document: drop a key (or item), a value of another
    type, an unknown key, nested garbage, a number off by a little or a lot, another string of the
    document, or a document that is not an object."""
    doc = copy.deepcopy(doc)
    paths = _paths(doc)
    op = rng.choice(
        ["drop", "retype", "unknown", "garbage", "number", "string", "root"],
        p=[0.2, 0.25, 0.1, 0.1, 0.15, 0.15, 0.05],
    )
    if op == "root" or len(paths) == 1:
        new = [doc] if rng.random() < 0.2 else _garbage(rng, 1)
        return new, f"json root -> {type(new).__name__}"
    if op == "unknown":
        dicts = [p for p in paths if isinstance(_get(doc, p), dict)]
        p = dicts[int(rng.integers(0, len(dicts)))] if dicts else ()
        if isinstance(_get(doc, p), dict):
            _get(doc, p)[f"zz_unknown_{int(rng.integers(0, 100))}"] = _garbage(rng, 1)
            return doc, f"json unknown key at {_name(p)}"
    p = paths[1 + int(rng.integers(0, len(paths) - 1))]
    parent, key, old = _get(doc, p[:-1]), p[-1], _get(doc, p)
    if op == "drop":
        del parent[key]
        return doc, f"json drop {_name(p)}"
    if op == "number" and isinstance(old, (int, float)) and not isinstance(old, bool):
        new = [old + 1, old - 1, -old, 0, old * 1000 + 7, old + 0.5, str(old), float(old)][int(rng.integers(0, 8))]
    elif op == "string":
        pool = [*_strings(doc), *vocab] or ["x"]
        new = pool[int(rng.integers(0, len(pool)))]
    elif op == "garbage":
        new = _garbage(rng)
    else:
        new = JUNK[int(rng.integers(0, len(JUNK)))]
    parent[key] = new
    return doc, f"json {op} {_name(p)}: {old!r:.40} -> {new!r:.40}"


def _get(doc: Any, path: tuple) -> Any:
    for k in path:
        doc = doc[k]
    return doc


def _name(path: tuple) -> str:
    return ".".join(map(str, path)) or "<root>"


def mutate_safetensors(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    """The header's length (u64), the header JSON's structure, or the header's bytes."""
    n = struct.unpack_from("<Q", data)[0]
    header, rest = data[8 : 8 + n], data[8 + n :]
    op = rng.choice(["length", "json", "bytes"], p=[0.3, 0.5, 0.2])
    if op == "length":
        new = int(rng.choice([0, 1, 2, n - 1, n + 1, n + 8, len(data), len(data) - 8, 2**32, 2**63, 2**64 - 1]))
        return struct.pack("<Q", new % 2**64) + data[8:], f"safetensors header length {n} -> {new}"
    if op == "json":
        dtypes = ("F16", "BF16", "F64", "I64", "I8", "U8", "BOOL", "F8_E4M3", "Q4")
        doc, what = mutate_json(json.loads(header), rng, vocab=dtypes)
        text = json.dumps(doc).encode()
        return struct.pack("<Q", len(text)) + text + rest, f"safetensors header {what}"
    text, what = mutate_bytes(header, rng)
    size = len(text) if rng.random() < 0.7 else n
    return struct.pack("<Q", size) + text + rest, f"safetensors header {what} (length {size})"


def mutate_npz(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    """One array of ``params.npz`` dropped, renamed, reshaped, of another dtype, or with a bad value."""
    with np.load(io.BytesIO(data)) as npz:
        arrays = {k: npz[k] for k in npz.files}
    key = sorted(arrays)[int(rng.integers(0, len(arrays)))]
    a = arrays[key]
    op = rng.choice(["drop", "rename", "shape", "dtype", "value"], p=[0.15, 0.1, 0.3, 0.2, 0.25])
    if op == "drop":
        del arrays[key]
    elif op == "rename":
        arrays[key.lower() + "_x"] = arrays.pop(key)
    elif op == "shape":
        shapes = [a.T, a.reshape(-1), a[None], a.reshape(-1)[:0], np.float32(1.0), a.reshape(-1)[:-1], np.tile(a, 2)]
        arrays[key] = shapes[int(rng.integers(0, len(shapes)))]
    elif op == "dtype":
        dtypes = [np.float64, np.float16, np.int32, np.int8, np.bool_, np.complex64, "<U3", object]
        arrays[key] = a.astype(dtypes[int(rng.integers(0, len(dtypes)))])
    else:
        b = np.array(a, np.float32)
        flat = b.reshape(-1)
        if flat.size:
            flat[int(rng.integers(0, flat.size))] = rng.choice([np.nan, np.inf, -np.inf, 0.0, -1.0, 2.5, 1e38])
        arrays[key] = b
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue(), f"npz {op} {key!r}"


def gguf_int_fields(data: bytes) -> list[tuple[int, int]]:
    """``(offset, size)`` of every integer field of a valid GGUF's header: counts, string lengths,
    value types, array item types and counts, scalar values, n_dims, dims, tensor types, offsets."""
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
    out = [(4, 4), (8, 8), (16, 8)]
    pos = 24

    def take(size: int) -> int:
        nonlocal pos
        out.append((pos, size))
        pos += size
        return int.from_bytes(data[pos - size : pos], "little")

    def skip(size: int) -> None:
        nonlocal pos
        pos += size

    def value(vtype: int) -> None:
        if vtype in sizes:
            if vtype in (6, 12):
                skip(sizes[vtype])  # floats: no integer field
            else:
                take(sizes[vtype])
        elif vtype == 8:
            skip(take(8))
        else:
            itype, count = take(4), take(8)
            for _ in range(count):
                value(itype)

    n_tensors, n_kv = struct.unpack_from("<QQ", data, 8)
    for _ in range(n_kv):
        skip(take(8))
        value(take(4))
    for _ in range(n_tensors):
        skip(take(8))
        for _ in range(take(4)):
            take(8)
        take(4), take(8)
    return out


def mutate_gguf(data: bytes, rng: np.random.Generator, fields: list[tuple[int, int]]) -> tuple[bytes, str]:
    """An integer field of the header set to an interesting value."""
    pos, size = fields[int(rng.integers(0, len(fields)))]
    old = int.from_bytes(data[pos : pos + size], "little")
    top = 1 << (8 * size)
    pool = [*INTERESTING, old + 1, old - 1, old * 2, top - 1, top - 2, top // 2, len(data), len(data) // 2]
    new = int(pool[int(rng.integers(0, len(pool)))]) % top
    return data[:pos] + new.to_bytes(size, "little") + data[
        pos + size :
    ], f"gguf field at {pos} ({size} B) {old} -> {new}"


def mutate(files: dict[str, bytes], rel: str, kind: str, rng: np.random.Generator) -> tuple[dict, str]:
    """``({path: new bytes, or None to remove the file}, description)`` for one mutation of ``rel``."""
    data = files[rel]
    r = rng.random()
    if r < 0.03:
        return {rel: None}, f"{rel}: removed"
    changes: dict[str, bytes | None] = {}
    if kind in ("json", "store_json") and r < 0.6:
        doc, what = mutate_json(json.loads(data), rng)
        if kind == "store_json" and isinstance(doc, dict) and rng.random() < 0.8:
            doc[CHECKSUM_KEY] = st.json_checksum(doc)
            what += " (re-checksummed)"
        new = json.dumps(doc, indent=1).encode()
    elif kind == "safetensors" and r < 0.65:
        new, what = mutate_safetensors(data, rng)
    elif kind == "npz" and r < 0.5:
        new, what = mutate_npz(data, rng)
    elif kind == "gguf" and r < 0.6:
        new, what = mutate_gguf(data, rng, gguf_int_fields(data))
    else:
        new, what = mutate_bytes(data, rng)
    changes[rel] = new
    meta = os.path.join(os.path.dirname(rel), "metadata.json")
    if kind == "npz" and meta in files and (what.startswith("npz") or rng.random() < 0.5):
        doc = json.loads(files[meta])  # the sha256 follows the change, so it reaches the arrays
        doc["params_sha256"] = hashlib.sha256(new).hexdigest()
        changes[meta] = json.dumps(doc).encode()
        what += " (params_sha256 updated)"
    return changes, f"{rel}: {what}"


# ------------------------------------------------------------------------------------------------
# Running


def _write(path: str, data: bytes | None) -> None:
    """Replaces the file (a new inode: a memory map of the old one stays valid) or removes it."""
    if data is None:
        if os.path.exists(path):
            os.remove(path)
        return
    tmp = path + ".fuzz-tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _on_alarm(signum, frame):
    raise Hang()


def run_case(target: Target, folder: str, timeout: float) -> str:
    """``"loaded"`` (and checked) or ``"error"`` (a named error naming the folder); anything else
    raises (an AssertionError for a bad result or message, the loader's own exception, Hang)."""
    old = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        result = target.load(folder)
    except target.errors as e:
        assert folder in str(e), f"the error does not name the file: {e}"
        return "error"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    target.check(result, folder)
    return "loaded"


def run_target(target: Target, folder: str, n: int, seed: int = 0, *, timeout: float = 10.0) -> Report:
    """Writes the target's valid input under ``folder``, checks that it loads, then runs ``n``
    mutations, each on a fresh copy of the valid files (restored after every case)."""
    files_kinds = target.make(folder)
    files = {rel: open(os.path.join(folder, rel), "rb").read() for rel, _ in files_kinds}
    report = Report(target.name)
    assert run_case(target, folder, timeout) == "loaded", f"{target.name}: the valid input does not load"
    t0 = time.perf_counter()
    for i in range(n):
        rng = np.random.default_rng([seed, zlib.crc32(target.name.encode()), i])
        rel, kind = files_kinds[int(rng.integers(0, len(files_kinds)))]
        changes, what = mutate(files, rel, kind, rng)
        for path, data in changes.items():
            _write(os.path.join(folder, path), data)
        try:
            report.counts[run_case(target, folder, timeout)] += 1
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # noqa: B036  (a Rust panic is a BaseException: a bug like any other)
            kind_ = "hang" if isinstance(e, Hang) else type(e).__name__
            report.counts[f"BUG {kind_}"] += 1
            tb = traceback.format_exception(type(e), e, e.__traceback__)[-3:]
            report.bugs.append(
                f"{target.name} seed={seed} i={i}: {what}\n  {kind_}: {str(e)[:400]}\n  {''.join(tb)[-1500:]}"
            )
        finally:
            for path in changes:
                _write(os.path.join(folder, path), files[path])
    report.seconds = time.perf_counter() - t0
    return report


# ------------------------------------------------------------------------------------------------
# Valid inputs and checks of what loads


def rand_params(layout: str, seed: int = 0, d_out: int = D) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = {
        "W_enc": rng.standard_normal((D, N)).astype(np.float32),
        "W_dec": rng.standard_normal((N, d_out)).astype(np.float32),
        "b_enc": rng.standard_normal(N).astype(np.float32),
        "b_dec": rng.standard_normal(d_out).astype(np.float32),
    }
    if layout in ("jumprelu", "transcoder"):
        p["threshold"] = rng.uniform(0.1, 0.5, N).astype(np.float32)
    if layout == "topk":
        p["k"] = np.float32(3)
    if layout == "transcoder":
        p["W_skip"] = rng.standard_normal((D, d_out)).astype(np.float32)
    return p


def check_params(p: Any, folder: str, *, transcoder: bool = False) -> None:
    """A whole SAE of one layout: its keys, float32, finite, consistent shapes, threshold > 0, k."""
    assert isinstance(p, dict) and {"W_enc", "W_dec", "b_enc", "b_dec"} <= set(p) <= SAE_KEYS, sorted(p)
    assert not ({"threshold", "k"} <= set(p)) and ("W_skip" not in p or "threshold" in p), sorted(p)
    for k, v in p.items():
        assert isinstance(v, np.ndarray) and v.dtype == np.float32 and np.isfinite(v).all(), (k, v)
    assert p["W_enc"].ndim == 2 and min(p["W_enc"].shape) >= 1, p["W_enc"].shape
    d_in, d_sae = p["W_enc"].shape
    d_out = p["W_dec"].shape[-1] if transcoder else d_in
    want = {"W_dec": (d_sae, d_out), "b_enc": (d_sae,), "b_dec": (d_out,), "threshold": (d_sae,), "k": ()}
    want["W_skip"] = (d_in, d_out)
    for k, v in p.items():
        assert k == "W_enc" or v.shape == want[k], (k, v.shape, want[k])
    assert "threshold" not in p or (p["threshold"] > 0).all()
    assert "k" not in p or (float(p["k"]).is_integer() and 1 <= p["k"] <= d_sae), p["k"]


def check_metadata(m: Any, folder: str) -> None:
    assert isinstance(m, dict) and all(isinstance(k, str) for k in m), m
    for key, types in (("architecture", str), ("site", str), ("model", str), ("layer", int), ("d_in", int)):
        v = m.get(key)
        assert v is None or (isinstance(v, types) and not isinstance(v, bool)), (key, v)


def make_npz(layout: str | None) -> Callable[[str], list[tuple[str, str]]]:
    def make(folder):
        meta = None if layout is None else {"architecture": layout, "site": "res", "layer": 3, "model": "toy"}
        sae_io.save_params(os.path.join(folder, "params.npz"), rand_params(layout or "jumprelu"), meta)
        return [("params.npz", "npz")] + ([] if meta is None else [("metadata.json", "json")])

    return make


def make_gs2(transcoder: bool) -> Callable[[str], list[tuple[str, str]]]:
    def make(folder):
        meta = None  # a released SAE's folder; our transcoder export writes metadata.json beside
        if transcoder:
            params = rand_params("transcoder", d_out=D_OUT)
            sub = formats.gs2_dir(folder, "mlp_in", 2, width=16384, l0="small", affine=True)
            meta = {"architecture": "transcoder", "encoder": "jumprelu", "site": "mlp_in", "layer": 2}
        else:
            params, sub = rand_params("jumprelu"), formats.gs2_dir(folder, "res", 12, width=16384, l0=11.6)
        formats.save_gemma_scope_2(sub, params, meta)
        rel = os.path.relpath(sub, folder)
        files = [(os.path.join(rel, "params.safetensors"), "safetensors")]
        return files + ([(os.path.join(rel, "metadata.json"), "json")] if meta else [])

    return make


def make_sae_lens(layout: str) -> Callable[[str], list[tuple[str, str]]]:
    def make(folder):
        meta = {"architecture": layout, "site": "res", "layer": 3, "model": "toy"}
        lf = np.full(N, -2.0, np.float32)
        formats.save_sae_lens(folder, rand_params(layout), meta, lf)
        return [("cfg.json", "json"), ("sae_weights.safetensors", "safetensors")]

    return make


def _sae_dir(folder: str) -> str:
    """The SAE folder under a target's folder (Gemma Scope 2 puts it two levels down)."""
    for root, _, names in os.walk(folder):
        if "params.safetensors" in names:
            return root
    return folder


def make_gguf(folder: str) -> list[tuple[str, str]]:
    path = os.path.join(folder, "tiny.gguf")
    w = gguf.GGUFWriter(path, "llama")
    w.add_custom_alignment(32)
    w.add_uint8("t.u8", 7)
    w.add_int16("t.i16", -3)
    w.add_uint32("t.u32", 7)
    w.add_int64("t.i64", -(2**40))
    w.add_float64("t.f64", 0.25)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "héllo")
    w.add_array("t.ints", [1, 2, 3])
    w.add_array("t.strs", ["a", "bc", ""])
    w.add_array("t.nested", [[1, 2], [3]])
    w.add_token_list(["<pad>", "<eos>", "▁the"])
    w.add_token_scores([0.0, -1.0, -2.0])
    w.add_tensor("a.weight", np.arange(12, dtype=np.float32).reshape(3, 4))
    w.add_tensor("b.weight", np.linspace(-1, 1, 64, dtype=np.float32).astype(np.float16).reshape(2, 32))
    q = gguf.quants.quantize(np.linspace(-2, 2, 64, dtype=np.float32).reshape(2, 32), gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("c.weight", q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return [("tiny.gguf", "gguf")]


def check_gguf(result: Any, folder: str) -> None:
    """Metadata keyed by strings; every tensor's bytes whole (its size from shape and type) and
    dequantising to its shape."""
    meta, tensors = result
    assert isinstance(meta, dict) and all(isinstance(k, str) for k in meta)
    assert isinstance(tensors, list) and len(tensors) == meta["GGUF.tensor_count"]
    for t in tensors:
        assert isinstance(t.name, str) and all(isinstance(d, int) and d >= 0 for d in t.shape), t[:3]
        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(t.qtype)]
        assert t.shape and 0 not in t.shape and t.shape[0] % block == 0, t[:3]
        assert t.data.dtype == np.uint8 and t.data.size == int(np.prod(t.shape)) // block * size, t[:3]
        try:
            assert gguf_file.dequantize(t).shape == tuple(reversed(t.shape))
        except gguf_file.GGUFError as e:  # a valid type gguf-py cannot dequantise: said by name
            assert "cannot be dequantised" in str(e) and t.name in str(e)


STORE_SITES = {"res_L3": 8, "att_L3": 4}


def make_store(folder: str) -> list[tuple[str, str]]:
    with st.ActivationWriter(folder, STORE_SITES, {"model": "toy"}, chunk_rows=4, chunks_per_shard=2) as w:
        for b in range(3):
            w.write_batch(b, {s: np.full((5 + b, d), b, np.float32) for s, d in STORE_SITES.items()})
    rels = [st.STORE_JSON, st.PROGRESS_JSON, st.COMPLETE] + [f"{s}/{st.SITE_JSON}" for s in STORE_SITES]
    return [(r, "store_json") for r in rels]


def check_store(info: Any, folder: str) -> None:
    def count(v, lo):
        return isinstance(v, int) and not isinstance(v, bool) and v >= lo

    assert isinstance(info, st.StoreInfo) and info.root == folder
    assert isinstance(info.sites, dict) and info.sites and isinstance(info.metadata, dict)
    assert count(info.n_batches, 0), info.n_batches
    for name, meta in info.sites.items():
        assert isinstance(name, str) and isinstance(meta, dict), (name, meta)
        assert count(meta.get("n_rows"), 0), meta
        assert all(count(meta.get(k), 1) for k in ("d_in", "chunk_rows", "shard_rows")), meta


def make_config(folder: str) -> list[tuple[str, str]]:
    c = config_lib.validate(config_lib.resolve(demo.get_config("runlocal=True")))
    with open(os.path.join(folder, "config.json"), "w") as fh:
        fh.write(c.to_json_best_effort(indent=2))
    return [("config.json", "json")]


def _kind(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return type(v).__name__
    return "int" if isinstance(v, int) else "number" if isinstance(v, float) else type(v).__name__


def check_config(c: Any, folder: str, base: ml_collections.ConfigDict | None = None, prefix: str = "") -> None:
    """Every field of :func:`base_config`, of its default's type (ints in float fields; tuples of
    the default items' type)."""
    base = config_lib.base_config() if base is None else base
    assert isinstance(c, ml_collections.ConfigDict) and set(base.keys()) <= set(c.keys())
    for k in base.keys():
        b, v = base[k], c[k]
        if k == "runlocal_overrides":
            continue
        if isinstance(b, ml_collections.ConfigDict):
            check_config(v, folder, b, f"{prefix}{k}.")
        elif isinstance(b, tuple):
            assert isinstance(v, tuple), (prefix + k, v)
            kinds = {_kind(x) for x in b} or {"int", "number", "str"}
            assert all(_kind(x) in kinds | ({"int"} if "number" in kinds else set()) for x in v), (prefix + k, v)
        else:
            ok = {_kind(b)} | ({"int"} if _kind(b) == "number" else set())
            assert _kind(v) in ok, (prefix + k, v, b)


def _gs2_params(transcoder: bool) -> Target:
    return Target(
        f"load_params:gs2-{'transcoder' if transcoder else 'sae'}",
        make_gs2(transcoder),
        lambda f: sae_io.load_params(_sae_dir(f)),
        lambda p, f: check_params(p, f, transcoder=transcoder),
        (sae_io.SAEFileError,),
    )


TARGETS = (
    *(
        Target(
            f"load_params:npz-{lay or 'released'}",
            make_npz(lay),
            sae_io.load_params,
            check_params,
            (sae_io.SAEFileError,),
        )
        for lay in ("jumprelu", "topk", None)
    ),
    Target("load_metadata:npz", make_npz("topk"), sae_io.load_metadata, check_metadata, (sae_io.SAEFileError,)),
    _gs2_params(False),
    _gs2_params(True),
    Target(
        "load_metadata:gs2",
        make_gs2(True),
        lambda f: sae_io.load_metadata(_sae_dir(f)),
        check_metadata,
        (sae_io.SAEFileError,),
    ),
    *(
        Target(
            f"load_params:sae_lens-{lay}", make_sae_lens(lay), sae_io.load_params, check_params, (sae_io.SAEFileError,)
        )
        for lay in ("jumprelu", "topk")
    ),
    Target(
        "load_metadata:sae_lens", make_sae_lens("topk"), sae_io.load_metadata, check_metadata, (sae_io.SAEFileError,)
    ),
    Target(
        "gguf_file.read",
        make_gguf,
        lambda f: gguf_file.read(os.path.join(f, "tiny.gguf")),
        check_gguf,
        (gguf_file.GGUFError,),
    ),
    Target("open_store", make_store, st.open_store, check_store, (st.StoreError,)),
    Target("load_saved", make_config, config_files.load_saved, check_config, (config_lib.ConfigError,)),
)
# Mutations per target in the test: a few thousand in all, well under a minute on a slow CPU.
TEST_MUTATIONS = {"open_store": 400, "load_saved": 500, "gguf_file.read": 600}
DEFAULT_MUTATIONS = 250


@pytest.mark.parametrize("target", TARGETS, ids=[t.name for t in TARGETS])
def test_malformed_files_raise_only_the_named_error(target, tmp_path):
    folder = str(tmp_path / "t")
    os.makedirs(folder)
    report = run_target(target, folder, TEST_MUTATIONS.get(target.name, DEFAULT_MUTATIONS), seed=0)
    print(f"\n{target.name}: {dict(report.counts)} in {report.seconds:.1f} s")
    assert not report.bugs, f"{len(report.bugs)} bugs; the first:\n" + "\n".join(report.bugs[:3])
    assert report.counts["error"] > 0  # the mutations reached the loader's checks


def _edit_json(fn: Callable[[dict], Any], checksum: bool = False) -> Callable[[bytes], bytes]:
    def edit(data: bytes) -> bytes:
        doc = json.loads(data)
        doc = fn(doc) or doc
        if checksum:
            doc[CHECKSUM_KEY] = st.json_checksum(doc)
        return json.dumps(doc).encode()

    return edit


def _complex_w_enc(data: bytes) -> bytes:
    with np.load(io.BytesIO(data)) as npz:
        arrays = {k: npz[k] for k in npz.files}
    buf = io.BytesIO()
    np.savez(buf, **{**arrays, "W_enc": arrays["W_enc"].astype(np.complex64)})
    return buf.getvalue()


# Inputs the fuzzer found raising something else than the named error (now the named error, with
# the words that say what is wrong): (target, file, edit, words in the message).
FOUND = [
    ("load_params:npz-jumprelu", "metadata.json", lambda d: b"[1, 2]", "not an object"),
    ("load_params:npz-topk", "metadata.json", _edit_json(lambda d: d.update(architecture=["x"])), "'architecture'"),
    ("load_metadata:npz", "metadata.json", _edit_json(lambda d: d.update(layer="3")), "'layer' must be int"),
    ("load_params:npz-released", "params.npz", _complex_w_enc, "'W_enc' has dtype complex64"),
    ("load_params:sae_lens-topk", "cfg.json", lambda d: b"\xff" + d, "not valid JSON"),
    ("load_params:sae_lens-topk", "cfg.json", _edit_json(lambda d: d.update(k="abc")), "'k' must be"),
    ("load_params:sae_lens-jumprelu", "cfg.json", lambda d: b'"cfg"', "not an object"),
    ("load_metadata:sae_lens", "cfg.json", _edit_json(lambda d: d["metadata"].update(hook_name=3.5)), "hook_name"),
    ("gguf_file.read", "tiny.gguf", lambda d: d[:10], "too short"),
    ("gguf_file.read", "tiny.gguf", lambda d: d[:-40], "runs past the end of the file"),
    ("gguf_file.read", "tiny.gguf", lambda d: d[:24] + b"\xff" * 8 + d[32:], "needs"),
    ("open_store", "COMPLETE", _edit_json(lambda d: d.update(batches_done="x"), checksum=True), "batches_done"),
    ("open_store", "progress.json", _edit_json(lambda d: d.update(sites="x"), checksum=True), None),
    ("open_store", "store.json", _edit_json(lambda d: d.update(metadata=[1]), checksum=True), "'metadata'"),
    ("load_saved", "config.json", lambda d: "ä".encode("latin-1") + d, "not valid JSON"),
    ("load_saved", "config.json", _edit_json(lambda d: d.update(sites="res")), "config.sites: must be a list"),
    ("load_saved", "config.json", _edit_json(lambda d: d.update(sae=[1])), "config.sae must be a JSON object"),
    ("load_saved", "config.json", _edit_json(lambda d: d.update(batch_size=None)), "config.batch_size"),
]


@pytest.mark.parametrize("name,rel,edit,words", FOUND, ids=[f"{f[0]}-{f[1]}-{i}" for i, f in enumerate(FOUND)])
def test_inputs_the_fuzzer_found(name, rel, edit, words, tmp_path):
    """Each loads (the damage is harmless: ``words`` None) or raises the named error saying what."""
    target = next(t for t in TARGETS if t.name == name)
    folder = str(tmp_path)
    target.make(folder)
    path = os.path.join(folder, rel)
    _write(path, edit(open(path, "rb").read()))
    if words is None:
        assert run_case(target, folder, timeout=30.0) == "loaded"
        return
    with pytest.raises(target.errors, match=re.escape(words)):
        target.load(folder)
