"""Text in, token sequences out: corpora, a deterministic held-out split, packing.

Sources (:func:`iter_texts`, one document per yielded string):
- ``embedded``: the Debian fortunes corpus committed in ``gemmascope/data/corpus`` (no network).
- ``hf``: a Hugging Face dataset, streamed (``datasets`` is optional and imported lazily).
- ``files``: local ``.txt`` / ``.jsonl`` / ``.parquet`` files (each may be ``.gz``-compressed
  except parquet); parquet needs ``pyarrow``.

Held-out split: a document belongs to the evaluation split when a keyed hash of its text falls
below ``heldout_fraction`` (:func:`is_heldout`). It needs no index, works on streams, and is the
same on every machine and run, so evaluation text never appears in training text (documents
with identical text land on the same side).

Packing (:func:`iter_packed` / :func:`pack`): every document is tokenised without special tokens
and followed by EOS; the documents form one stream that is cut into pieces of ``seq_len - 1``
tokens, and every sequence is ``[BOS] + piece``, so BOS is at position 0 of every row and a
document may continue into the next row (after that row's BOS). The last row is right-padded
with ``pad_id``. The mask is True at real text tokens only: False at BOS, EOS, padding, and any
token whose id is one of those (e.g. a literal special token in the text).
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import importlib.resources
import io
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

EMBEDDED_CORPUS = "corpus/fortunes.txt.gz"


# ----------------------------------------------------------------------------- sources


def _split_percent(text: str, separator: str = "%") -> list[str]:
    docs, cur = [], []
    for line in text.splitlines():
        if line.strip() == separator:
            docs.append("\n".join(cur))
            cur = []
        else:
            cur.append(line)
    docs.append("\n".join(cur))
    return [d.strip("\n") for d in docs if d.strip()]


def embedded_corpus() -> list[str]:
    """The embedded corpus: a list of documents (13k fortunes, about 2.3 MB), read through
    importlib.resources (works from a wheel or a zip)."""
    res = importlib.resources.files("gemmascope.data").joinpath(EMBEDDED_CORPUS)
    with res.open("rb") as f:
        raw = gzip.decompress(f.read())
    return _split_percent(raw.decode("utf-8"))


def _open_text(path: str):
    if path.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def iter_file_texts(path: str, text_column: str = "text", doc_separator: str | None = None) -> Iterator[str]:
    """Documents of one local file.

    ``.txt[.gz]``: the whole file is one document, or, with ``doc_separator`` set (e.g. ``"%"``),
    documents separated by lines holding only that string. ``.jsonl[.gz]``: one JSON object per
    line, the document is ``obj[text_column]``. ``.parquet``: column ``text_column`` (pyarrow).
    """
    base = path[:-3] if path.endswith(".gz") else path
    if base.endswith(".jsonl") or base.endswith(".json"):
        with _open_text(path) as f:
            for n, line in enumerate(f):
                line = line.strip()
                if not line:
                    continue
                obj = json.loads(line)
                if text_column not in obj:
                    raise KeyError(f"{path}:{n + 1}: no field {text_column!r} (fields: {sorted(obj)})")
                if obj[text_column]:
                    yield str(obj[text_column])
    elif base.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError(f"reading {path} needs pyarrow: pip install pyarrow") from e
        pf = pq.ParquetFile(path)
        if text_column not in pf.schema_arrow.names:
            raise KeyError(f"{path}: no column {text_column!r} (columns: {pf.schema_arrow.names})")
        for batch in pf.iter_batches(columns=[text_column]):
            for t in batch.column(0).to_pylist():
                if t:
                    yield str(t)
    else:
        with _open_text(path) as f:
            text = f.read()
        if doc_separator is None:
            if text.strip():
                yield text
        else:
            yield from _split_percent(text, doc_separator)


def iter_hf_texts(
    name: str,
    split: str = "train",
    text_column: str = "text",
    config: str | None = None,
    streaming: bool = True,
    **kwargs,
) -> Iterator[str]:
    """Documents of a Hugging Face dataset, streamed. Needs ``pip install datasets``."""
    try:
        import datasets
    except ImportError as e:
        raise ImportError("Hugging Face dataset sources need the optional dependency: pip install datasets") from e
    ds = datasets.load_dataset(name, config, split=split, streaming=streaming, **kwargs)
    for row in ds:
        t = row[text_column]
        if t:
            yield str(t)


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    return getattr(cfg, key, default) if hasattr(cfg, key) else default


def iter_texts(source_cfg: Any = None) -> Iterator[str]:
    """Documents of a source described by a dict / ConfigDict (or ``"embedded"``/None).

    Fields: ``kind``: "embedded" | "hf" | "files"; for hf: ``name``, ``config``, ``split``,
    ``text_column``; for files: ``paths`` (a path, a glob, or a list of them), ``text_column``,
    ``doc_separator``. Common: ``split_part``: None (all), "train" or "heldout", with
    ``heldout_fraction`` (default 0.05) and ``salt``; ``limit``: stop after that many documents.
    """
    if source_cfg is None or source_cfg == "embedded":
        source_cfg = {"kind": "embedded"}
    kind = _get(source_cfg, "kind", "embedded")
    if kind == "embedded":
        it: Iterable[str] = embedded_corpus()
    elif kind == "hf":
        name = _get(source_cfg, "name")
        if not name:
            raise ValueError("text source kind='hf' needs a dataset name")
        it = iter_hf_texts(
            name,
            split=_get(source_cfg, "split", "train") or "train",
            text_column=_get(source_cfg, "text_column", "text") or "text",
            config=_get(source_cfg, "config"),
        )
    elif kind == "files":
        paths = _get(source_cfg, "paths")
        if isinstance(paths, str):
            paths = [paths]
        files: list[str] = []
        for p in paths or []:
            hits = sorted(glob.glob(p)) if any(c in p for c in "*?[") else [p]
            if not hits or not all(os.path.isfile(h) for h in hits):
                raise FileNotFoundError(f"text source: no file matches {p!r}")
            files += hits
        if not files:
            raise ValueError("text source kind='files' needs paths")
        tc = _get(source_cfg, "text_column", "text") or "text"
        sep = _get(source_cfg, "doc_separator")
        it = (t for f in files for t in iter_file_texts(f, tc, sep))
    else:
        raise ValueError(f"unknown text source kind {kind!r} (known: embedded, hf, files)")
    part = _get(source_cfg, "split_part")
    if part is not None:
        it = filter_split(
            it,
            part,
            _get(source_cfg, "heldout_fraction", 0.05) or 0.05,
            _get(source_cfg, "salt", "gemmascope") or "gemmascope",
        )
    limit = _get(source_cfg, "limit")
    for n, t in enumerate(it):
        if limit is not None and n >= limit:
            return
        yield t


# ----------------------------------------------------------------------------- held-out split


def doc_hash_unit(text: str, salt: str = "gemmascope") -> float:
    """A number in [0, 1) fixed by the document's text and the salt (blake2b, not Python's hash)."""
    h = hashlib.blake2b(text.encode("utf-8"), digest_size=8, key=salt.encode("utf-8")[:64]).digest()
    return int.from_bytes(h, "big") / 2.0**64


def is_heldout(text: str, fraction: float = 0.05, salt: str = "gemmascope") -> bool:
    """True when the document belongs to the held-out (evaluation) split."""
    return doc_hash_unit(text, salt) < fraction


def filter_split(texts: Iterable[str], part: str, fraction: float = 0.05, salt: str = "gemmascope") -> Iterator[str]:
    """The documents of ``part`` ("train" or "heldout") of a stream."""
    if part not in ("train", "heldout"):
        raise ValueError(f"split part must be 'train' or 'heldout', got {part!r}")
    want = part == "heldout"
    return (t for t in texts if is_heldout(t, fraction, salt) == want)


def split_texts(texts: Iterable[str], fraction: float = 0.05, salt: str = "gemmascope") -> tuple[list[str], list[str]]:
    """(train, heldout) lists; disjoint, deterministic, about ``fraction`` of documents held out."""
    train, held = [], []
    for t in texts:
        (held if is_heldout(t, fraction, salt) else train).append(t)
    return train, held


# ----------------------------------------------------------------------------- tokenise and pack


def _encode_batches(tokenizer, texts: Iterable[str], batch: int = 256) -> Iterator[list[int]]:
    buf: list[str] = []
    for t in texts:
        buf.append(t)
        if len(buf) == batch:
            yield from tokenizer(buf, add_special_tokens=False)["input_ids"]
            buf = []
    if buf:
        yield from tokenizer(buf, add_special_tokens=False)["input_ids"]


def count_tokens(tokenizer, texts: Iterable[str]) -> int:
    """Text tokens (no special tokens) in ``texts``."""
    return sum(len(ids) for ids in _encode_batches(tokenizer, texts))


def special_mask(tokens: np.ndarray, special_ids: Iterable[int]) -> np.ndarray:
    """[N, T] -> bool [N, T], False where the id is one of ``special_ids``."""
    return ~np.isin(tokens, np.asarray(sorted(set(int(i) for i in special_ids))))


def iter_packed(
    tokenizer,
    texts: Iterable[str],
    seq_len: int,
    *,
    bos_id: int,
    eos_id: int,
    pad_id: int | None = None,
    batch_size: int = 64,
    drop_last: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Stream packed batches: (tokens [n, seq_len] int32, mask [n, seq_len] bool), n <= batch_size.

    Every row is ``[BOS] + seq_len - 1`` tokens of the EOS-joined document stream. The final row
    is right-padded with ``pad_id`` (default: eos_id), or dropped with ``drop_last``.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")
    pad = eos_id if pad_id is None else pad_id
    body = seq_len - 1
    specials = (bos_id, eos_id, pad)
    rows: list[np.ndarray] = []
    lengths: list[int] = []

    def emit():
        toks = np.stack(rows).astype(np.int32)
        real = np.arange(seq_len)[None, :] < np.asarray(lengths)[:, None]
        return toks, real & special_mask(toks, specials)

    buf: list[np.ndarray] = []  # pieces of the stream not yet cut into rows
    buf_len = 0
    for ids in _encode_batches(tokenizer, texts):
        if len(ids) == 0:
            continue  # an empty document would only add a lone EOS
        buf.append(np.asarray(list(ids) + [eos_id], np.int32))
        buf_len += len(ids) + 1
        if buf_len < body:
            continue
        stream = np.concatenate(buf)
        n_full = len(stream) // body
        for j in range(n_full):
            rows.append(np.concatenate([np.array([bos_id], np.int32), stream[j * body : (j + 1) * body]]))
            lengths.append(seq_len)
            if len(rows) == batch_size:
                yield emit()
                rows, lengths = [], []
        rest = stream[n_full * body :]
        buf, buf_len = [rest], len(rest)
    rest = np.concatenate(buf) if buf else np.empty(0, np.int32)
    if len(rest) and not drop_last:
        row = np.full(seq_len, pad, np.int32)
        row[0] = bos_id
        row[1 : 1 + len(rest)] = rest
        rows.append(row)
        lengths.append(1 + len(rest))
    if rows:
        yield emit()


def pack(
    tokenizer,
    texts: Iterable[str],
    seq_len: int,
    *,
    bos_id: int,
    eos_id: int,
    pad_id: int | None = None,
    max_sequences: int | None = None,
    drop_last: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """All of ``texts`` packed: (tokens [N, seq_len] int32, mask [N, seq_len] bool). See module doc."""
    toks, masks = [], []
    n = 0
    for t, m in iter_packed(
        tokenizer, texts, seq_len, bos_id=bos_id, eos_id=eos_id, pad_id=pad_id, drop_last=drop_last
    ):
        toks.append(t)
        masks.append(m)
        n += len(t)
        if max_sequences is not None and n >= max_sequences:
            break
    if not toks:
        return np.zeros((0, seq_len), np.int32), np.zeros((0, seq_len), bool)
    tokens, mask = np.concatenate(toks), np.concatenate(masks)
    if max_sequences is not None:
        tokens, mask = tokens[:max_sequences], mask[:max_sequences]
    return tokens, mask
