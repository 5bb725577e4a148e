"""Progress of long jobs (generation, training, evaluation, analysis): a live bar on a terminal,
one line per report otherwise.

On a terminal (the stream's ``isatty()``) a ``tqdm`` bar shows the count, rate and ETA, with the
job's latest report (L0, FVU, ...) as its postfix, redrawn in place. Anywhere else (CI, logs,
notebooks, a ``log`` callback other than ``print``) the jobs print the same one line per report
as before, through their ``log`` callback, so log files and tests read the same text.
``GEMMASCOPE_PROGRESS=bar`` or ``=lines`` forces either mode; ``tty=`` does so per object (tests).

:class:`Progress` is the generic reporter; :class:`TrainingProgress` is the trainer's line
(step, tokens/s, ETA, the L0 and FVU of each SAE).
"""

from __future__ import annotations

import io
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

ENV = "GEMMASCOPE_PROGRESS"


def fmt_time(s: float) -> str:
    """Seconds -> ``H:MM:SS``."""
    s = int(max(s, 0))
    return f"{s // 3600}:{(s % 3600) // 60:02d}:{s % 60:02d}"


def use_bar(stream=None, log: Callable | None = print, tty: bool | None = None) -> bool:
    """Bar or lines: ``tty`` if given, else ``$GEMMASCOPE_PROGRESS`` (``bar``/``lines``), else a bar
    only when the job prints with ``print`` (not a caller's callback) to a terminal."""
    if tty is not None:
        return bool(tty)
    forced = os.environ.get(ENV, "").strip().lower()
    if forced in ("bar", "lines"):
        return forced == "bar"
    if forced:
        raise ValueError(f"${ENV}={forced!r}: expected 'bar' or 'lines'")
    stream = stream or sys.stdout
    return log is print and bool(getattr(stream, "isatty", lambda: False)())


def _columns(stream) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return 0


def _untagged(line: str) -> str:
    """``"[scan] 1,000 tokens"`` -> ``"1,000 tokens"`` (the bar shows the tag already)."""
    return line.split("] ", 1)[-1] if line.startswith("[") else line


class Progress:
    """Counts work towards ``total`` (None: unknown, no ETA) in ``unit`` s.

    Args:
      desc: the job's tag (``"generate:train"``), the bar's label.
      total: units to do, or None.
      log: where lines go in line mode (``print`` by default); None silences line mode.
      lines_every: in line mode, print every n-th :meth:`report` (the first always).
      initial: units already done (a resumed job).
      stream, tty: the bar's stream (default stdout) and the mode (see :func:`use_bar`).
    """

    def __init__(
        self,
        desc: str,
        total: float | None = None,
        unit: str = "tok",
        *,
        log: Callable | None = print,
        lines_every: int = 1,
        initial: float = 0,
        stream=None,
        tty: bool | None = None,
    ):
        self.desc, self.total, self.unit, self.log = desc, total, unit, log
        self.t_start = time.time()
        self.lines_every, self.n_reports, self.done = max(1, int(lines_every)), 0, initial
        self.stream = stream or sys.stdout
        self.is_bar = use_bar(self.stream, log, tty)
        self.bar = None  # the tqdm bar, made at the first update (a process that never reports draws nothing)
        self._initial, self._closed, self._pending = initial, False, 0

    def _bar(self):
        if self.bar is None and not self._closed:
            from tqdm import tqdm

            sized = _columns(self.stream) > 0  # a 0x0 pty (containers): fixed sizes, or tqdm draws nothing
            self.bar = tqdm(
                total=self.total,
                initial=self._initial,
                desc=self.desc,
                unit=self.unit,
                unit_scale=True,
                file=self.stream,
                dynamic_ncols=sized,
                ncols=None if sized else 120,
                nrows=None if sized else 24,
                smoothing=0.1,
            )
            self.bar.start_t = self.bar.last_print_t = self.t_start  # rate and ETA count from the job's start
        return self.bar

    def report(self, done: float, line: str | Callable[[], str] | None = None) -> None:
        """``done`` units so far; ``line``: the report (or a function making it, called only when
        printed). A bar shows ``line`` after its ``[tag]`` as the postfix."""
        self.done = done
        if self.is_bar:
            bar = self._bar()
            if bar.total is not None and done > bar.total:  # a job may overshoot by its last batch
                bar.total = done
            if line is not None:
                text = line() if callable(line) else line
                bar.set_postfix_str(_untagged(text), refresh=False)
            bar.update(done - bar.n)
        elif self.log is not None and self.n_reports % self.lines_every == 0:
            text = line() if callable(line) else line
            if text is None:
                of = f"/{self.total:,.0f}" if self.total else ""
                text = f"[{self.desc}] {done:,.0f}{of} {self.unit}"
            self.log(text)
        self.n_reports += 1

    def advance(self, n: float, line: str | Callable[[], str] | None = None) -> None:
        self.report(self.done + n, line)

    def lines(self, log: Callable[[str], None] | None) -> Callable[[str], None] | None:
        """A ``log`` callback for a job's own progress lines: ``log`` itself in line mode; in bar
        mode each line becomes the bar's postfix (the count comes from :meth:`iterate`)."""
        if not self.is_bar:
            return log
        return lambda text: self._bar().set_postfix_str(_untagged(text))

    def iterate(self, items: Iterable[Any], size: Callable[[Any], float] = lambda _: 1) -> Iterator[Any]:
        """Yields ``items``, advancing the bar by ``size(item)`` once the consumer is done with it
        (when it asks for the next one, or at :meth:`close` for the last, so a consumer that stops
        early still counts it); nothing in line mode, where the job's own lines report."""
        for item in items:
            self._count_pending()
            if self.is_bar:
                self._pending = size(item)
            yield item
        self._count_pending()

    def _count_pending(self) -> None:
        n, self._pending = self._pending, 0
        if n and self.is_bar and not self._closed:
            bar = self._bar()
            if bar.total is not None and bar.n + n > bar.total:  # a job may overshoot by its last batch
                bar.total = bar.n + n
            bar.update(n)
            self.done = bar.n

    def write(self, text: str) -> None:
        """A message that is not progress: above the bar, or a plain line."""
        if self.is_bar:
            self._bar().write(text, file=self.stream)
        elif self.log is not None:
            self.log(text)

    def close(self) -> None:
        self._count_pending()
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class TrainingProgress(Progress):
    """The trainer's report: step, tokens/s, ETA, and the L0 and FVU of each SAE. Lines look like
    ``[res_layer15_width4k] step 200/1000 (20%) 5,120 tok/s ETA 0:01:20 | L0 61.2 8.0 | FVU 0.281 0.412``;
    the bar counts tokens. It closes itself at the last step."""

    def __init__(
        self, name: str, total_steps: int, start_step: int, *, batch_size: int, stream=None, tty: bool | None = None
    ):
        stream = stream or sys.stdout
        self.name, self.total_steps, self.batch = name, total_steps, batch_size
        self.start_step, self.t0 = start_step, time.time()
        super().__init__(
            name,
            total_steps * batch_size,
            "tok",
            initial=start_step * batch_size,
            stream=stream,
            log=lambda s: print(s, file=stream, flush=True),
            tty=tty if tty is not None else use_bar(stream, print),
        )

    def report(self, step: int, l0: Sequence[float], fvu: Sequence[float]) -> str:
        done = max(step - self.start_step, 1)
        dt = max(time.time() - self.t0, 1e-9)
        tok_s = done * self.batch / dt
        eta = (self.total_steps - step) * dt / done
        l0s = " ".join(f"{v:.1f}" for v in l0)
        fv = " ".join(f"{v:.3f}" for v in fvu)
        line = (
            f"[{self.name}] step {step}/{self.total_steps} ({100 * step / self.total_steps:.0f}%) "
            f"{tok_s:,.0f} tok/s ETA {fmt_time(eta)} | L0 {l0s} | FVU {fv}"
        )
        short = f"step {step}/{self.total_steps} | L0 {l0s} | FVU {fv}"  # the bar shows the rate and ETA
        super().report(step * self.batch, short if self.is_bar else line)
        if step >= self.total_steps:
            self.close()
        return line
