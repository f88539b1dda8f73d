"""Progress of a long step: a tqdm bar on a terminal, else a log line every ~10 s.

Snakemake rules send a step's stderr to its log file (``logs/…``), where a tqdm bar would be
one ever-growing line of carriage returns; there each :class:`Progress` writes, at most once
per ``PIPELINE_PROGRESS_SECONDS`` (default 10; 0 = every update), one line through the
``pipeline.progress`` logger::

    2026-11-29 20:41:07,512 INFO pipeline.progress: SAE sweep (6 members): 12288/40000 tok (30.7%), 850 tok/s, elapsed 0:00:14, ETA 0:00:32 | step=12 loss=…

plus a first line when it starts and a last one when it ends. On a terminal (stderr is a
tty) the same numbers show as a tqdm bar instead. ``enabled=False`` (``--no-progress``)
shows neither.

:class:`SAESweepProgress` turns the SAE sweep's per-step loss terms into the training line:
step, loss / MSE / L1 and L0 of the best member so far, its dead-latent fraction (as
the sweep history counts it), and which member is best (lowest MSE among members
whose L0 ≤ ``max_l0``, the rule the sweep's choice uses), all read from the sweep's history.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from tqdm.auto import tqdm

log = logging.getLogger("pipeline.progress")

INTERVAL_ENV = "PIPELINE_PROGRESS_SECONDS"
DEFAULT_INTERVAL_S = 10.0

Info = Mapping[str, Any] | Callable[[], Mapping[str, Any]]


def interval_s() -> float:
    """Seconds between log lines: ``$PIPELINE_PROGRESS_SECONDS`` or 10."""
    raw = os.environ.get(INTERVAL_ENV, "")
    try:
        return max(0.0, float(raw)) if raw else DEFAULT_INTERVAL_S
    except ValueError:
        return DEFAULT_INTERVAL_S


def _clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class Progress:
    """Progress of ``total`` units of work; ``update(n, info)`` after each piece.

    ``info`` (a mapping or a function returning one, called only when a line or the bar is
    drawn) adds ``key=value`` fields. Use as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        what: str,
        total: int | float | None,
        unit: str = "it",
        *,
        enabled: bool = True,
        interval: float | None = None,
        terminal: bool | None = None,
    ) -> None:
        self.what, self.total, self.unit = what, total, unit
        self.enabled = enabled
        self.interval = interval_s() if interval is None else interval
        terminal = sys.stderr.isatty() if terminal is None else terminal
        self.bar = tqdm(total=total, desc=what, unit=unit, unit_scale=True) if enabled and terminal else None
        self.done = 0
        self.t0 = self.last = time.monotonic()
        self.closed = False
        self.postfix: Mapping[str, Any] = {}
        if self.enabled and self.bar is None:
            log.info("%s: start, %s %s to do", what, "?" if total is None else _fmt(total), unit)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int | float = 1, info: Info | None = None) -> None:
        """``n`` more units done; ``info`` fields join the line when one is due."""
        self.done += n
        if not self.enabled:
            return
        now = time.monotonic()
        due = now - self.last >= self.interval
        if self.bar is not None:
            self.bar.update(n)
            if (info is not None or self.postfix) and due:
                fields = {**self.postfix, **(_resolve(info) if info is not None else {})}
                self.bar.set_postfix({k: _fmt(v) for k, v in fields.items()}, refresh=False)
                self.last = now
        elif due:
            self.last = now
            log.info("%s", self.line(now, info))

    def set_postfix(self, **info: Any) -> None:
        """Fields for every later line (tqdm's name, so a tqdm bar can be swapped for this)."""
        self.postfix = info

    def line(self, now: float | None = None, info: Info | None = None) -> str:
        """``what: done/total unit (pct), rate unit/s, elapsed h:mm:ss, ETA h:mm:ss | k=v …``."""
        now = time.monotonic() if now is None else now
        elapsed = now - self.t0
        rate = self.done / elapsed if elapsed > 0 else 0.0
        text = f"{self.what}: {_fmt(self.done)}"
        if self.total:
            text += f"/{_fmt(self.total)} {self.unit} ({100 * self.done / self.total:.1f}%)"
        else:
            text += f" {self.unit}"
        text += f", {rate:.3g} {self.unit}/s, elapsed {_clock(elapsed)}"
        if self.total:
            left = self.total - self.done
            text += f", ETA {_clock(left / rate) if rate > 0 else '?'}"
        fields = {**self.postfix, **(_resolve(info) if info is not None else {})}
        if fields:
            text += " | " + " ".join(f"{k}={_fmt(v)}" for k, v in fields.items())
        return text

    def close(self, info: Info | None = None) -> None:
        if self.closed:
            return
        self.closed = True
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            log.info("%s done", self.line(None, info))


def _resolve(info: Info) -> Mapping[str, Any]:
    return info() if callable(info) else info


@contextmanager
def dask_progress(what: str, *, enabled: bool = True, interval: float | None = None) -> Iterator[None]:
    """:class:`Progress` over the tasks of every dask computation inside the block (local schedulers).

    A dask distributed cluster runs tasks elsewhere: its dashboard shows progress instead.
    """
    from dask.callbacks import Callback  # dask: only for the steps that compute with it

    class _Tasks(Callback):
        bar: Progress | None = None

        def _start_state(self, dsk, state) -> None:
            total = sum(len(state[k]) for k in ("ready", "waiting", "running", "finished"))
            self.bar = Progress(what, total, "task", enabled=enabled, interval=interval)

        def _posttask(self, key, result, dsk, state, worker_id) -> None:
            if self.bar is not None:
                self.bar.update(1)

        def _finish(self, dsk, state, errored) -> None:
            if self.bar is not None:
                self.bar.close()

    with _Tasks():
        yield


class SAESweepProgress:
    """``on_step(step, n_tokens_seen, history)`` for :func:`pipeline.sae.train.train_sweep`.

    Called after every logged step; reads each member's latest loss terms, L0 and dead-latent
    fraction from the sweep's history (values leave the device only when a line is due).
    """

    def __init__(
        self,
        n_tokens: int,
        labels: Sequence[str],
        *,
        max_l0: float,
        enabled: bool = True,
        interval: float | None = None,
        terminal: bool | None = None,
    ) -> None:
        self.labels = list(labels)
        self.max_l0 = max_l0
        m = len(self.labels)
        self.progress = Progress(
            f"SAE sweep ({m} member{'s' if m != 1 else ''})",
            n_tokens,
            "tok",
            enabled=enabled,
            interval=interval,
            terminal=terminal,
        )
        self.seen = 0
        self.step = 0
        self.history: Any = None

    def __call__(self, step: int, seen: int, history: Any) -> None:
        if not self.progress.enabled:
            return
        self.step, self.history = step + 1, history
        n, self.seen = seen - self.seen, seen
        self.progress.update(n, self.info)

    def info(self) -> dict[str, Any]:
        """Steps done, the best member's loss terms, L0 and dead fraction."""
        if self.history is None:
            return {"step": self.step}
        rows = [
            (m, *(self.history.last(m, k) for k in ("loss", "mse", "l1", "l0", "frac_dead")))
            for m in range(len(self.labels))
        ]
        ok = [r for r in rows if r[4] <= self.max_l0] or rows
        m, loss, mse, l1, l0, dead = min(ok, key=lambda r: r[2])
        return {
            "step": self.step,
            "loss": loss,
            "mse": mse,
            "l1": l1,
            "L0": l0,
            "dead": round(dead, 4),
            "best": f"member {m} [{self.labels[m]}]",
        }

    def close(self) -> None:
        self.progress.close()


__all__ = ["DEFAULT_INTERVAL_S", "INTERVAL_ENV", "Progress", "SAESweepProgress", "dask_progress", "interval_s"]
