"""Tokenizers, offline: from a checkpoint directory, a hub id in the cache, a ``.gguf`` file or an
embedded model; a tokenizer built from a GGUF file is built once and cached.

transformers builds a GGUF tokenizer from the file's metadata, which is slow for a large
vocabulary: Gemma 3's 262,144 tokens took 71 s on 2 shared cores (most of it parsing the
vocabulary arrays of the file, twice, then generating BPE merges), against 6 s to load the cached
result. The first build logs a line every ``heartbeat_s`` seconds with the time so far, then the
total; later calls load ``$GEMMASCOPE_CACHE/tokenizers/<file>-<size>-<mtime>``.
"""

from __future__ import annotations

import os
import sys
import threading
import time

from gemmascope.lm import embedded
from gemmascope.lm.embedded import cache_root
from gemmascope.lm.hf import CheckpointError, resolve_hub_id


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _with_heartbeat(what: str, fn, log, every: float):
    """``fn()``, logging ``what`` with the seconds elapsed every ``every`` seconds until it returns."""
    done = threading.Event()
    t0 = time.time()

    def beat():
        while not done.wait(every):
            log(f"[tokenizer] {what}: {time.time() - t0:.0f}s so far")

    th = threading.Thread(target=beat, daemon=True)
    th.start()
    try:
        return fn()
    finally:
        done.set()
        th.join()


def gguf_tokenizer_cache_dir(path: str) -> str:
    """Where the tokenizer built from the GGUF file ``path`` is cached (keyed by name, size, mtime)."""
    st = os.stat(path)
    return os.path.join(cache_root(), "tokenizers", f"{os.path.basename(path)}-{st.st_size}-{st.st_mtime_ns}")


def load_tokenizer(path: str, cache: bool = True, log=_stderr, heartbeat_s: float = 10.0):
    """A transformers tokenizer from ``path``: ``"embedded"`` / ``"embedded:<name>"``, a ``.gguf``
    file, a checkpoint directory or a hub id (through the hub cache).

    For a GGUF file the tokenizer is built by ``AutoTokenizer.from_pretrained(dir, gguf_file=...)``
    once, with progress and its time logged, and saved under :func:`gguf_tokenizer_cache_dir`
    (with ``cache``); later calls load that (a broken cache entry is rebuilt).
    """
    from transformers import AutoTokenizer

    name = embedded.parse(path)
    if name is not None:
        path = embedded.gguf_path(name)
    if os.path.isfile(path) and path.endswith(".gguf"):
        cdir = gguf_tokenizer_cache_dir(path)
        if cache and os.path.isfile(os.path.join(cdir, "tokenizer.json")):
            try:
                return AutoTokenizer.from_pretrained(cdir, local_files_only=True)
            except Exception:  # noqa: BLE001 - a broken cache entry is rebuilt below
                log(f"[tokenizer] cached tokenizer at {cdir} is unreadable: rebuilding it")
        base = os.path.basename(path)
        log(
            f"[tokenizer] building the tokenizer of {base} from its GGUF metadata (once; "
            f"{'cached at ' + cdir if cache else 'not cached'})"
        )
        t0 = time.time()
        tok = _with_heartbeat(
            f"building the tokenizer of {base}",
            lambda: AutoTokenizer.from_pretrained(
                os.path.dirname(os.path.abspath(path)), gguf_file=base, local_files_only=True
            ),
            log,
            heartbeat_s,
        )
        log(f"[tokenizer] built in {time.time() - t0:.1f}s ({len(tok):,} tokens)")
        if cache:
            try:
                tmp = f"{cdir}.tmp{os.getpid()}"
                tok.save_pretrained(tmp)
                os.makedirs(os.path.dirname(cdir), exist_ok=True)
                os.replace(tmp, cdir)
            except OSError:
                pass  # read-only cache or a concurrent writer: the tokenizer is still fine
        return tok
    hub_dir = resolve_hub_id(path)
    if hub_dir is not None:
        path = hub_dir
    if os.path.isdir(path):
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    raise CheckpointError(
        f"no tokenizer at {path!r}: expected a checkpoint directory, a .gguf file or 'embedded[:<name>]'"
    )
