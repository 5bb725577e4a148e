"""Reading the activation store: a shuffled, prefetched, resumable stream of batches of one site."""

from __future__ import annotations

import queue
import threading
import weakref
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import tensorstore as ts

from gemmascope.data.store.layout import (
    CONTEXT,
    DEFAULT_SHUFFLE_BUFFER_BYTES,
    VERSION,
    Root,
    StoreError,
    check_shards,
    nonfinite_error,
    open_site_array,
    read_error,
)
from gemmascope.data.store.meta import open_store

_END = object()


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


class ActivationReader:
    """A shuffled, prefetched, resumable stream of ``float32 [batch_size, d_in]`` batches of one site.

    Args:
      root, site: the store and the site to read (``open_store(root).sites`` lists them).
      batch_size: rows per batch.
      seed: the stream is a deterministic function of the seed (and the process slice).
      shuffle_buffer_rows: rows mixed in memory at a time, rounded up to whole chunks (one window);
        default about 256 MiB. Memory use is about twice this (the next window loads in advance).
      expected_d_in: if given, StoreError unless the site's d_in matches.
      epochs: None for an endless stream, else the number of passes; the last batch of a finite
        stream may be short unless ``drop_remainder``.
      prefetch: batches prepared ahead on the background thread.
      process_index, process_count: this process's disjoint slice of the chunks (multi-host).
      state: a ``get_state()`` dict to continue from.

    Every row of the process's slice appears exactly once per epoch. Each batch is a fresh array
    (gathered in shuffled order), the caller's to keep or modify.
    """

    def __init__(
        self,
        root: str,
        site: str,
        batch_size: int,
        seed: int,
        *,
        shuffle_buffer_rows: int | None = None,
        expected_d_in: int | None = None,
        epochs: int | None = None,
        prefetch: int = 2,
        process_index: int = 0,
        process_count: int = 1,
        state: Mapping[str, Any] | None = None,
        drop_remainder: bool = False,
    ):
        info = open_store(root)
        if site not in info.sites:
            raise StoreError(f"activation store at {root} has no site {site!r}; it has {sorted(info.sites)}")
        meta = info.sites[site]
        self.root, self.site, self.info, self.meta = root, site, info, meta
        self.d_in = int(meta["d_in"])
        if expected_d_in is not None and int(expected_d_in) != self.d_in:
            raise StoreError(
                f"site {site} of activation store {root} has d_in {self.d_in}, but "
                f"expected_d_in is {int(expected_d_in)}"
            )
        self.n_rows = int(meta["n_rows"])
        self.chunk_rows = int(meta["chunk_rows"])
        self.n_chunks = -(-self.n_rows // self.chunk_rows)
        if self.n_rows == 0:
            raise StoreError(f"site {site} of activation store {root} has no rows")
        if batch_size < 1:
            raise StoreError(f"{root}: batch_size must be >= 1, got {batch_size}")
        if int(seed) < 0:
            raise StoreError(f"{root}: seed must be >= 0, got {seed}")
        if not (0 <= process_index < process_count):
            raise StoreError(f"{root}: process_index {process_index} not in [0, {process_count})")
        if process_count > self.n_chunks:
            raise StoreError(
                f"site {site} of {root} has {self.n_chunks} chunks, fewer than "
                f"{process_count} processes; each process needs at least one"
            )
        if epochs is not None and epochs < 1:
            raise StoreError(f"{root}: epochs must be None or >= 1, got {epochs}")
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.epochs = epochs
        self.prefetch = max(1, int(prefetch))
        self.process_index, self.process_count = int(process_index), int(process_count)
        self.drop_remainder = bool(drop_remainder)
        if shuffle_buffer_rows is None:
            shuffle_buffer_rows = DEFAULT_SHUFFLE_BUFFER_BYTES // (4 * self.d_in)
        self.window_chunks = max(1, -(-int(shuffle_buffer_rows) // self.chunk_rows))

        self.shard_rows = int(meta["shard_rows"])
        self._kv = Root(root)
        self._array = open_site_array(self._kv, site, self.n_rows, self.d_in)
        check_shards(self._kv, site, self.n_rows, self.shard_rows)  # a missing shard fails here, early

        self._pos = (0, 0, 0)  # (epoch, window, row) of the next row handed to the consumer
        self._batches = 0
        self._rows = 0
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue | None = None
        self._stop: threading.Event | None = None
        self._done = False
        if state is not None:
            self.set_state(state)

    # -- the stream, as pure functions ------------------------------------------------------------
    def epoch_chunks(self, epoch: int) -> np.ndarray:
        """This process's chunk indices in epoch ``epoch``, in read order."""
        perm = np.random.default_rng([self.seed, 0, epoch]).permutation(self.n_chunks)
        return perm[self.process_index :: self.process_count]

    def _n_windows(self, epoch_chunks: np.ndarray) -> int:
        return -(-len(epoch_chunks) // self.window_chunks)

    def _window_chunks(self, epoch: int, window: int) -> np.ndarray:
        """The chunks of one window, in index order (its rows are permuted anyway; sorted reads are
        closer to sequential and neighbours in a shard can be coalesced)."""
        c = self.epoch_chunks(epoch)
        return np.sort(c[window * self.window_chunks : (window + 1) * self.window_chunks])

    def _chunk_range(self, c: int) -> tuple[int, int]:
        return c * self.chunk_rows, min((c + 1) * self.chunk_rows, self.n_rows)

    def _row_perm(self, epoch: int, window: int, n: int) -> np.ndarray:
        return np.random.default_rng([self.seed, 1, epoch, window, self.process_index]).permutation(n)

    def _start_window(self, epoch: int, window: int):
        """Issues the reads of one window's chunks into one buffer; returns a handle to finish."""
        chunks = self._window_chunks(epoch, window)
        ranges = [self._chunk_range(int(c)) for c in chunks]
        n = sum(b - a for a, b in ranges)
        buf = np.empty((n, self.d_in), np.float32)
        dst = ts.array(buf, copy=False, write=True, context=CONTEXT)
        futures, off = [], 0
        for a, b in ranges:
            futures.append(dst[off : off + b - a].write(self._array[a:b]))
            off += b - a
        return epoch, window, ranges, buf, futures

    def _finish_window(self, handle):
        epoch, window, ranges, buf, futures = handle
        off = 0
        for (a, b), f in zip(ranges, futures):
            self._result(f, a, b)
            err = nonfinite_error(self._kv, self.site, buf[off : off + b - a], a=a, b=b, shard_rows=self.shard_rows)
            if err is not None:  # checked per chunk as it is loaded
                raise err
            off += b - a
        buf.flags.writeable = False
        return buf, self._row_perm(epoch, window, buf.shape[0])

    def _result(self, future, a: int, b: int):
        """The future's result; a tensorstore failure (missing or corrupt data) as a StoreError."""
        try:
            return future.result()
        except ValueError as e:
            raise read_error(e, self._kv, self.site, (a, b), self.shard_rows) from None

    def _next_window(self, epoch: int, window: int) -> tuple[int, int] | None:
        if window + 1 < self._n_windows(self.epoch_chunks(epoch)):
            return epoch, window + 1
        if self.epochs is not None and epoch + 1 >= self.epochs:
            return None
        return epoch + 1, 0

    # -- background production ---------------------------------------------------------------------
    @staticmethod
    def _produce(
        ref: weakref.ref[ActivationReader],
        start: tuple[int, int, int],
        q: queue.Queue,
        stop: threading.Event,
    ) -> None:
        """The background thread. It holds the reader only weakly between batches, so a reader
        that is dropped without ``close()`` is collected and its thread ends."""

        def put(item) -> bool:
            while not stop.is_set() and ref() is not None:
                try:
                    q.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    pass
            return False

        try:
            r = ref()
            if r is None:
                return
            epoch, window, row = start
            if r.epochs is not None and epoch >= r.epochs:
                del r
                put(_END)
                return
            pending = r._start_window(epoch, window)
            data, perm = r._finish_window(pending)
            nxt = r._next_window(epoch, window)
            pending = r._start_window(*nxt) if nxt else None
            del r
            while not stop.is_set():
                r = ref()
                if r is None:
                    return
                parts, need = [], r.batch_size
                while need:
                    if row >= len(perm):
                        if nxt is None:
                            break
                        (epoch, window), row = nxt, 0
                        data, perm = r._finish_window(pending)
                        nxt = r._next_window(epoch, window)
                        pending = r._start_window(*nxt) if nxt else None
                        continue
                    take = min(need, len(perm) - row)
                    parts.append(data[perm[row : row + take]])
                    row += take
                    need -= take
                drop = r.drop_remainder
                del r
                if need and (not parts or drop):
                    put(_END)
                    return
                batch = parts[0] if len(parts) == 1 else np.concatenate(parts)
                pos = (epoch, window, row)
                if row >= len(perm) and nxt is not None:
                    pos = (nxt[0], nxt[1], 0)
                elif row >= len(perm):
                    pos = (epoch + 1, 0, 0)  # the end of a finite stream
                if not put((batch, pos)):
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            r = None
            put(_Failure(e))

    def _ensure_started(self) -> None:
        if self._thread is None:
            self._queue = queue.Queue(maxsize=self.prefetch)
            self._stop = threading.Event()
            self._thread = threading.Thread(
                target=ActivationReader._produce,
                args=(weakref.ref(self), self._pos, self._queue, self._stop),
                name=f"ActivationReader[{self.site}]",
                daemon=True,
            )
            self._thread.start()

    def _halt(self) -> None:
        if self._thread is not None:
            self._stop.set()
            if self._thread is not threading.current_thread():
                self._thread.join()
            self._thread = self._queue = self._stop = None

    # -- the consumer's interface ----------------------------------------------------------------
    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def __next__(self) -> np.ndarray:
        if self._done:
            raise StopIteration
        self._ensure_started()
        item = self._queue.get()
        if item is _END:
            self._done = True
            self._halt()
            raise StopIteration
        if isinstance(item, _Failure):
            self._halt()
            raise item.exc
        batch, self._pos = item
        self._batches += 1
        self._rows += batch.shape[0]
        return batch

    def get_state(self) -> dict[str, Any]:
        """The position after the last batch handed out (not the prefetched ones); JSON-serialisable.

        ``{"version", "site", "seed", "process_index", "process_count", "window_chunks", "n_rows",
        "epoch", "window", "row", "batches", "rows"}``: the next row is row ``row`` (in shuffled
        order) of window ``window`` of epoch ``epoch``; the rest identifies the stream (checked on
        restore) or counts what was consumed (informative). Independent of ``batch_size``.
        """
        epoch, window, row = self._pos
        return {
            "version": VERSION,
            "site": self.site,
            "seed": self.seed,
            "process_index": self.process_index,
            "process_count": self.process_count,
            "window_chunks": self.window_chunks,
            "n_rows": self.n_rows,
            "epoch": int(epoch),
            "window": int(window),
            "row": int(row),
            "batches": self._batches,
            "rows": self._rows,
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Continues from a ``get_state()`` dict: the next batches are those the saved reader would
        have yielded. StoreError if the state belongs to a different stream."""
        mine = self.get_state()
        for key in ("version", "site", "seed", "process_index", "process_count", "window_chunks", "n_rows"):
            if key not in state:
                raise StoreError(f"{self.root}: reader state lacks {key!r}: {dict(state)}")
            if state[key] != mine[key]:
                raise StoreError(
                    f"{self.root}: reader state has {key}={state[key]!r} but this reader has "
                    f"{key}={mine[key]!r}; it belongs to a different stream"
                )
        self._halt()
        self._pos = (int(state["epoch"]), int(state["window"]), int(state["row"]))
        self._batches, self._rows = int(state.get("batches", 0)), int(state.get("rows", 0))
        self._done = False

    def rows_per_epoch(self, epoch: int = 0) -> int:
        """Rows this process reads in ``epoch`` (processes can differ by up to one chunk)."""
        return sum(b - a for a, b in map(self._chunk_range, map(int, self.epoch_chunks(epoch))))

    def sample(self, n_rows: int, seed: int = 0) -> np.ndarray:
        """``float32 [n_rows, d_in]`` rows drawn without replacement from random chunks of the whole
        site (all processes' chunks), e.g. to estimate the normalisation constant. Independent of the
        stream's position."""
        n_rows = min(int(n_rows), self.n_rows)
        rng = np.random.default_rng([int(seed), 2])
        order = rng.permutation(self.n_chunks)
        # Up to 4 chunks per requested chunk-worth of rows (rows from more sequences), while the
        # chunks read stay under ~256 MiB.
        factor = max(1, min(4, (256 << 20) // max(1, n_rows * self.d_in * 4)))
        k = min(self.n_chunks, max(factor * -(-n_rows // self.chunk_rows), 1))
        while True:
            ranges = [self._chunk_range(int(c)) for c in order[:k]]
            if sum(b - a for a, b in ranges) >= n_rows or k == self.n_chunks:
                break
            k = min(self.n_chunks, 2 * k)
        futures = [self._array[a:b].read() for a, b in ranges]
        blocks = []
        for (a, b), f in zip(ranges, futures):
            x = self._result(f, a, b)
            err = nonfinite_error(self._kv, self.site, x, a=a, b=b, shard_rows=self.shard_rows)
            if err is not None:
                raise err
            blocks.append(x)
        rows = np.concatenate(blocks)
        return rows[rng.choice(rows.shape[0], n_rows, replace=False)]

    def close(self) -> None:
        """Stops the background thread."""
        self._halt()

    def __enter__(self) -> ActivationReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self._halt()
        except Exception:  # noqa: BLE001
            pass


def estimate_norm_scale(root: str, site: str, n_rows: int | None = None, seed: int = 0) -> float:
    """C with ``E||x / C||^2 = 1``, i.e. ``sqrt(mean ||x||^2)``.

    ``n_rows=None``: the writer's exact value over every row (from site.json). Otherwise an estimate
    from ``n_rows`` sampled rows (:meth:`ActivationReader.sample`).
    """
    if n_rows is None:
        info = open_store(root)
        if site not in info.sites:
            raise StoreError(f"activation store at {root} has no site {site!r}; it has {sorted(info.sites)}")
        return float(info.sites[site]["norm_scale"])
    reader = ActivationReader(root, site, batch_size=1, seed=seed)
    x = reader.sample(n_rows, seed)
    return float(np.sqrt(np.mean(np.einsum("ij,ij->i", x, x, dtype=np.float64))))
