r"""The activation store: LM activations written once as raw fp32, read many times, shuffled.

Gemma Scope generated activations once, stored them as raw fp32 in large shards and trained
many SAEs from them (storing was over 10x cheaper than regenerating). This module is that
storage layer, on tensorstore (zarr v3, sharded) so the same code writes a local folder, GCS or
S3.

On-disk layout under a root (a local path or a ``file://``, ``gs://``, ``s3://``, ``memory://``
URL; see :func:`kvstore_spec`)::

    <root>/store.json          written first: format, version, sites {name: d_in, chunk_rows,
                               shard_rows}, the caller's metadata (model, tokenizer, corpus, ...)
    <root>/progress.json       batches done and, per site, rows written and sum of ||x||^2;
                               rewritten after the data it describes is durable
    <root>/<site>/zarr.json    one zarr v3 array per site: float32 [n_rows, d_in], chunk grid
                               [shard_rows, d_in] with the ``sharding_indexed`` codec holding inner
                               chunks [chunk_rows, d_in], raw little-endian bytes, no compression,
                               a crc32c after every inner chunk and after the shard index
    <root>/<site>/c/<i>/0      shard i: rows [i * shard_rows, (i + 1) * shard_rows)
    <root>/<site>/site.json    per-site metadata, written by finalize (see ActivationWriter)
    <root>/COMPLETE            written last; readers refuse a store without it

Every JSON file carries a ``checksum`` (sha256 of its canonical content). No storage fault passes
silently: a corrupted byte, a truncated or missing shard, a missing chunk, a missing or garbled
JSON file, or row counts that disagree raise :class:`StoreError` naming the path, the site, the
rows affected and what to do (``python launch/verify_store.py --store=ROOT --repair`` rolls the
store back to its last durable point before the damage; the generate command then rewrites only
what follows). Stores written before per-chunk checksums are read with a :class:`StoreWarning`.

Rows of a site are in generation order (batch 0's rows first); one row per non-special token.

Writing (crash safe)::

    with ActivationWriter(root, {"res_L12": 2304, "mlp_L12": 2304}, metadata) as w:
        for b in range(w.resume_from_batch, n_batches):   # skips batches a killed run finished
            w.write_batch(b, lm_activations(batch(b)))     # {site: float32 [n_rows, d_in]}
    # leaving the block cleanly calls finalize(); an exception leaves the store resumable

Reading (shuffled, prefetched, resumable)::

    r = ActivationReader(root, "res_L12", batch_size=4096, seed=0)
    x = next(r)                  # float32 [4096, d_in]
    state = r.get_state()        # small JSON dict; ActivationReader(..., state=state) continues
                                 # with exactly the batches this reader would have yielded next

The shuffled stream of one process is defined by pure functions of ``(seed, epoch, window)``:
epoch ``e`` permutes all inner chunks of the site with ``rng(seed, e)``; process ``p`` of ``P``
takes every ``P``-th chunk of that permutation (``perm[p::P]``, disjoint and covering); those are
cut into windows of ``window_chunks`` consecutive chunks (the shuffle buffer), each read in
chunk-index order into one buffer; the rows of a window are permuted with ``rng(seed, e, w, p)``.
The stream is the concatenation of all windows of all epochs, and batches are consecutive
``batch_size`` slices of it (a batch may span windows and epochs). So the position is three
integers ``(epoch, window, row)`` and resuming is exact. The next window loads (tensorstore's own
threads) while the current one is served; a background thread prepares ``prefetch`` batches.

Modules: :mod:`.layout` (paths, kvstore specs, file and array formats, errors), :mod:`.meta`
(opening with every file cross-checked; rollback), :mod:`.writer`, :mod:`.reader`, :mod:`.verify`.
"""

from gemmascope.data.store.layout import (  # noqa: F401 - the public names (Root, CONTEXT: tests)
    COMPLETE,
    CONTEXT,
    DEFAULT_CAPACITY_ROWS,
    DEFAULT_CHUNK_BYTES,
    DEFAULT_CHUNKS_PER_SHARD,
    DEFAULT_SHUFFLE_BUFFER_BYTES,
    FORMAT,
    PROGRESS_JSON,
    SITE_JSON,
    STORE_JSON,
    VERSION,
    Root,
    StoreError,
    StoreWarning,
    chunks_checksummed,
    default_chunk_rows,
    json_checksum,
    kvstore_spec,
    shard_key,
)
from gemmascope.data.store.meta import StoreInfo, open_store, rollback  # noqa: F401
from gemmascope.data.store.reader import ActivationReader, estimate_norm_scale  # noqa: F401
from gemmascope.data.store.verify import VerifyReport, repair_store, verify_store  # noqa: F401
from gemmascope.data.store.writer import ActivationWriter  # noqa: F401
