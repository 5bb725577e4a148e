"""Where training metrics go: JSON lines, TensorBoard event files, and (optionally) Weights & Biases.

Every logged step the trainer hands :meth:`MetricWriter.write` one row per SAE of the sweep:
identity fields (``location``, ``arch``, ``site``, ``layer``, ``width``, ``sae``, ``lambda``,
``step``, ``tokens``) and the step's metrics (``loss``, ``mse``, ``l0``, ``fvu``,
``dead_fraction``, ``threshold_mean/min/max``, the effective ``lambda`` (``k`` for TopK) and
``lr``; see :func:`gemmascope.train.step.make_train_step`). The writers:

* :class:`JsonlWriter`: the rows, verbatim, appended to ``<workdir>/metrics.jsonl`` (flushed
  every step, so a killed run keeps what it logged);
* :class:`TensorBoardWriter`: one TensorBoard run per SAE,
  ``<workdir>/tensorboard/<location>/sae<i>_<lambda|k><value>/events.out.tfevents.*``, one
  scalar per metric (``threshold_mean`` as ``threshold/mean``), written with ``tensorboardX``
  (protobuf only: no TensorFlow); ``tensorboard --logdir <workdir>/tensorboard`` shows them;
* :class:`WandbWriter`: one W&B run per location, metrics as ``sae<i>/<metric>``, only when
  ``config.wandb.project`` is set; ``wandb`` is imported then and only then (never a required
  dependency), and ``config.wandb.mode="offline"`` (the default) writes under
  ``<workdir>/wandb`` for a later ``wandb sync``.

:func:`for_location` builds the set a config asks for.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from gemmascope import config as config_lib
from gemmascope.common import disk_full_error

IDENTITY = ("location", "arch", "site", "layer", "width", "sae", "sweep_kind", "sweep_value", "step", "tokens")


class MetricWriter(Protocol):
    def write(self, step: int, rows: Sequence[dict[str, Any]]) -> None:
        """Records one logged step: ``rows[i]`` is SAE ``i``'s row."""

    def close(self) -> None:
        """Flushes and releases files (idempotent)."""


def scalars(row: dict[str, Any]) -> dict[str, float]:
    """The metric tags of one row: every numeric field but the identity ones (the SAE's
    ``sweep_value`` among them: it names the run); ``threshold_x`` -> ``threshold/x``."""
    out = {}
    for key, v in row.items():
        if key in IDENTITY or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if key.startswith("threshold_"):
            key = "threshold/" + key[len("threshold_") :]
        out[key] = float(v)
    return out


RUN_PREFIX = {"k": "k", "target_l0": "target", "lambda": "lambda"}


def run_name(i: int, value: float, kind: str) -> str:
    """``sae0_lambda0.0003``, ``sae2_k64`` or ``sae1_target40``: SAE ``i`` of the sweep and its
    value; ``kind`` is the sweep's kind (``config.sweep_kind``: ``lambda``, ``target_l0``, ``k``)."""
    if kind not in RUN_PREFIX:
        raise ValueError(f"run_name: sweep kind {kind!r} unknown (known: {sorted(RUN_PREFIX)})")
    v = int(value) if kind == "k" else value
    return f"sae{i}_{RUN_PREFIX[kind]}{v:g}"


def iter_metrics(workdir: str) -> Iterator[dict[str, Any]]:
    """The rows :class:`JsonlWriter` appended to ``workdir/metrics.jsonl``, in order."""
    with open(os.path.join(workdir, "metrics.jsonl")) as fh:
        for line in fh:
            yield json.loads(line)


class JsonlWriter:
    """Rows as JSON lines appended to ``path`` (``<workdir>/metrics.jsonl``).

    A step's rows go out in unbuffered ``os.write`` calls; when the disk fills part way, the file
    is cut back to its length before the step (it keeps whole lines only, so it stays readable by
    :func:`iter_metrics`) and :class:`gemmascope.common.DiskFullError` names it and the step's bytes.
    """

    def __init__(self, path: str):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path = path
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, step: int, rows: Sequence[dict[str, Any]]) -> None:
        data = "".join(json.dumps(row) + "\n" for row in rows).encode("utf-8")
        start = os.fstat(self._fd).st_size
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as e:
            os.ftruncate(self._fd, start)
            kept = f"{self.path} keeps every whole row before step {step}; the part written of its rows was cut off."
            err = disk_full_error(e, self.path, len(data), what=f"the metric rows of step {step} to", kept=kept)
            if err is None:
                raise
            raise err from e

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class TensorBoardWriter:
    """One ``tensorboardX.SummaryWriter`` per SAE under ``logdir/<run_name>``.

    tensorboardX writes events from a background thread; an error there (a full disk) would end
    that thread silently, and the trainer would then block forever on its full event queue. So the
    thread's writes are guarded (:meth:`_guard`): the first error is kept, later events are dropped,
    and the next :meth:`write` raises it (a full disk as :class:`gemmascope.common.DiskFullError`
    naming the run's folder).
    """

    def __init__(self, logdir: str, names: Sequence[str]):
        from tensorboardX import SummaryWriter

        self.logdir = logdir
        self._errors: list[tuple[str, Exception]] = []
        self._writers = [SummaryWriter(logdir=os.path.join(logdir, n), flush_secs=30) for n in names]
        for n, w in zip(names, self._writers):
            self._guard(w, os.path.join(logdir, n))

    def _guard(self, writer, path: str) -> None:
        try:
            events = writer._get_file_writer().event_writer._ev_writer  # what the thread calls
        except AttributeError:  # another tensorboardX layout: unguarded
            return
        errors = self._errors
        for method in ("write_event", "flush"):

            def guarded(*a, _real=getattr(events, method), **k):
                if errors:
                    return None
                try:
                    return _real(*a, **k)
                except Exception as e:  # noqa: BLE001 - kept, raised in the trainer's thread by write()
                    errors.append((path, e))
                    return None

            setattr(events, method, guarded)

    def _raise_kept(self) -> None:
        if self._errors:
            path, e = self._errors[0]
            kept = "Events written before stay in the event file (its last record may be cut off)."
            err = disk_full_error(e, path, None, what="TensorBoard events to", kept=kept)
            raise (err or e) from e

    def write(self, step: int, rows: Sequence[dict[str, Any]]) -> None:
        self._raise_kept()
        if len(rows) != len(self._writers):
            raise ValueError(f"{self.logdir}: {len(rows)} rows for {len(self._writers)} SAEs")
        for w, row in zip(self._writers, rows):
            for tag, v in scalars(row).items():
                w.add_scalar(tag, v, global_step=int(step))

    def close(self) -> None:
        for w in self._writers:
            try:
                w.close()
            except OSError:
                if not self._errors:  # after a kept error the files are already known to be cut off
                    raise
        self._writers = []


class WandbWriter:
    """One W&B run per location; metrics keyed ``sae<i>/<metric>``, logged at the training step."""

    def __init__(self, wandb_config, run_dir: str, name: str, config_dict: dict[str, Any]):
        try:
            import wandb
        except ImportError:
            raise ImportError(
                "config.wandb.project is set but wandb is not installed: pip install wandb "
                "(or leave config.wandb.project empty)"
            ) from None
        os.makedirs(run_dir, exist_ok=True)
        self._run = wandb.init(
            project=wandb_config.project,
            entity=wandb_config.entity or None,
            name=f"{wandb_config.name}-{name}" if wandb_config.name else name,
            group=wandb_config.name or None,
            mode=wandb_config.mode,
            dir=run_dir,
            config=config_dict,
            reinit="create_new",
        )

    def write(self, step: int, rows: Sequence[dict[str, Any]]) -> None:
        self._run.log({f"sae{row['sae']}/{tag}": v for row in rows for tag, v in scalars(row).items()}, step=int(step))

    def close(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None


class Writers:
    """Several writers as one (a context manager); an empty set writes nothing."""

    def __init__(self, writers: Sequence[MetricWriter] = ()):
        self.writers = list(writers)

    def write(self, step: int, rows: Sequence[dict[str, Any]]) -> None:
        for w in self.writers:
            w.write(step, rows)

    def close(self) -> None:
        for w in self.writers:
            w.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def for_location(config, workdir: str, location: str, enabled: bool = True) -> Writers:
    """The writers for one location of a sweep: ``metrics.jsonl`` always, TensorBoard unless
    ``config.tensorboard`` is False, W&B when ``config.wandb.project`` is set. ``enabled=False``
    (processes other than 0) writes nothing."""
    if not enabled:
        return Writers()

    out: list[MetricWriter] = [JsonlWriter(os.path.join(workdir, "metrics.jsonl"))]
    if config.tensorboard:
        kind = config_lib.sweep_kind(config)
        names = [run_name(i, v, kind) for i, v in enumerate(config_lib.sweep_values(config))]
        out.append(TensorBoardWriter(os.path.join(workdir, "tensorboard", location), names))
    if config.wandb.project:
        out.append(WandbWriter(config.wandb, os.path.join(workdir, "wandb"), location, config.to_dict()))
    return Writers(out)
