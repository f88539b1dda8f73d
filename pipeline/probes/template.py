"""The probe template: the run every probe kind shares, and the four steps each kind fills in.

A probe kind (``seg``, ``cls``; :mod:`pipeline.probe_kinds` registers them) is a
:class:`ProbeTemplate` subclass. :func:`run_probe` runs it:

1. setup (:func:`probe_setup`): the kind's config section, the run context (threads, device),
   the train and val stores, checked (:func:`pipeline.probes.features.open_probe_stores`), and
   the files it writes (:class:`pipeline.layout.ProbeFiles`);
2. ``data``: what the kind reads from the stores before fitting (labels, held-out selection
   images, the backbone's final norm);
3. ``fit``: the sweep of ``lrs`` x ``weight_decays`` members (:func:`~pipeline.probes.linear.fit_sweep`,
   one pass over the training rows per epoch for all members), with ``epoch_metric`` recorded after
   every epoch;
4. ``evaluate``: one row per member (fractions: ``train_loss``, the val metrics, ``selection_<metric>``
   and ``selection_loss`` on the held-out train images, or on val when none are held out);
5. shared: the best member (the highest ``selection_<metric>``, ties to the lowest
   ``selection_loss``, then the first: :func:`sweep_with_best`), ``sweep.csv``, the selection
   record, then the kind's ``tables`` (per-class CSVs), ``best.safetensors`` + ``best.json``
   (:func:`best_meta` plus the kind's ``meta``), the ``sweep`` and ``epochs`` charts and the
   kind's ``figures``; the step's summary.

Every file name comes from the run's :class:`~pipeline.layout.ProbeFiles` (the shared
``best.*``, ``sweep.*``, ``epochs.*``, and the kind's own through ``files.own(name)``, which
its ``ProbeKind.files`` declares).
"""

from __future__ import annotations

import datetime as dt
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import numpy as np
import pandas as pd
import torch

import pipeline
from pipeline import atomic, units
from pipeline.config import Config, ConfigError, to_jsonable
from pipeline.context import RunContext
from pipeline.layout import ProbeFiles, probe_dir_of
from pipeline.probe_kinds import PROBE_KINDS, probe_section
from pipeline.probes import figures
from pipeline.probes.features import FinalNorm, ProbeStores, open_probe_stores, store_record
from pipeline.probes.linear import (
    ProbeMember,
    ProbeSweep,
    best_member,
    epoch_table,
    member_grid,
    member_state,
    save_probe,
    sweep_table,
)
from pipeline.provenance import record
from pipeline.runtime import describe_device

__all__ = [
    "ProbeData",
    "ProbeRun",
    "ProbeTemplate",
    "best_meta",
    "n_held_out",
    "probe_setup",
    "run_probe",
    "selection_record",
    "sweep_with_best",
    "write_epochs",
    "write_sweep_csv",
]


@dataclass(frozen=True)
class ProbeRun:
    """What every step of one probe run reads: the config, its section, the run context's
    threads and device, the checked stores and the files to write."""

    cfg: Config
    pc: Any  # the kind's section dataclass (ProbeKind.section)
    threads: int
    device: torch.device
    stores: ProbeStores
    files: ProbeFiles
    progress: bool = True


class ProbeData(Protocol):
    """What the template needs of a kind's data: the final norm (its backbone provenance goes
    into ``best.json``) and the store indices of the held-out selection images."""

    @property
    def norm(self) -> FinalNorm: ...

    @property
    def held_out_images(self) -> np.ndarray: ...


D = TypeVar("D", bound=ProbeData)
E = TypeVar("E")


@dataclass(frozen=True)
class ProbeResults(Generic[E]):
    """A kind's evaluation: one row per member (fractions; see :func:`run_probe`) and what its
    tables and figures need (``detail``)."""

    rows: list[dict[str, float]]
    detail: E


class ProbeTemplate(ABC, Generic[D, E]):
    """One probe kind: its names and its four steps (``data``, ``fit``, ``evaluate``, and
    ``tables`` / ``figures`` for its own outputs); :func:`run_probe` does the rest."""

    kind: ClassVar[str]  # its name in PROBE_KINDS
    metric: ClassVar[str]  # the val metric the best member is chosen by (on the selection images)
    metric_title: ClassVar[str]  # ... as the sweep chart names it, before "(block B)"
    epoch_metric: ClassVar[str]  # what fit records after every epoch (epochs.csv)
    epoch_metric_title: ClassVar[str]

    @abstractmethod
    def data(self, run: ProbeRun) -> D:
        """Read what fitting needs from the stores; draw the held-out selection images."""

    @abstractmethod
    def fit(self, run: ProbeRun, data: D, members: Sequence[ProbeMember]) -> ProbeSweep:
        """Fit every member; record ``epoch_metric`` per epoch in the sweep's history."""

    @abstractmethod
    def evaluate(self, run: ProbeRun, data: D, sweep: ProbeSweep) -> ProbeResults[E]:
        """Every member's row: ``train_loss``, the val metrics (``metric`` among them),
        ``selection_<metric>`` and ``selection_loss``."""

    def columns(self, run: ProbeRun) -> dict[str, Any]:
        """Constant columns of ``sweep.csv`` before ``random_weights`` and ``device``."""
        return {}

    def tables(self, run: ProbeRun, data: D, results: ProbeResults[E], best: int) -> Any:
        """Write the kind's own tables (per class); return what ``figures`` needs of them."""
        return None

    def meta(self, run: ProbeRun, data: D, results: ProbeResults[E], best: int) -> dict[str, Any]:
        """The kind's fields of ``best.json`` (after ``selection`` and ``provenance``)."""
        return {}

    def figures(
        self,
        run: ProbeRun,
        results: ProbeResults[E],
        best: int,
        *,
        member: ProbeMember,
        tables: Any,
        best_metrics: dict[str, float],
    ) -> None:
        """Draw the kind's own figures (the sweep and epoch charts are shared); ``member``: the
        best member's hyper-parameters, ``tables``: what ``tables`` returned."""

    def summary(self, run: ProbeRun) -> dict[str, Any]:
        """The kind's fields of the step's summary (after the selection's)."""
        return {}


def run_probe(
    template: ProbeTemplate, cfg: Config, *, out_dir: Path | None = None, progress: bool = True, ctx=None
) -> dict:
    """Fit the kind's sweep on train, evaluate it, choose the best member, write every output
    (see the module docstring); return the step's summary. ``ctx``: the step's RunContext
    (default: one started here)."""
    kind, metric = template.kind, template.metric
    pc, threads, device, stores, files = probe_setup(cfg, kind, out_dir, ctx)
    run = ProbeRun(cfg, pc, threads, device, stores, files, progress)
    data = template.data(run)
    members = member_grid(pc.lrs, pc.weight_decays)

    t0 = time.perf_counter()
    sweep = template.fit(run, data, members)
    t1 = time.perf_counter()
    results = template.evaluate(run, data, sweep)
    t2 = time.perf_counter()

    rows = results.rows
    device_name = describe_device(device)
    table, best = sweep_with_best(
        members,
        rows,
        f"selection_{metric}",
        tie_break="selection_loss",
        **template.columns(run),
        random_weights=stores.random_weights,
        device=device_name,
    )
    best_metrics = {k: float(v) for k, v in rows[best].items()}
    image_ids = [str(stores.train.image_ids[i]) for i in data.held_out_images]
    selection = selection_record(pc, metric, best_metrics, image_ids)

    table = write_sweep_csv(table, rows[0], files)
    tables = template.tables(run, data, results, best)
    meta = best_meta(
        kind,
        pc,
        stores,
        data.norm,
        members,
        best,
        best_metrics,
        selected_by=f"{metric} on {selection['on']}, ties: lowest loss there",
        device_name=device_name,
        threads=threads,
        seconds={"train": round(t1 - t0, 2), "evaluate": round(t2 - t1, 2)},
        selection=selection,
        provenance=record(cfg, f"probe-{kind}"),
        **template.meta(run, data, results, best),
        n_selection_images=len(image_ids),
    )
    save_probe(files.best, member_state(sweep, best), meta)
    member = sweep.members[best]
    figures.sweep_chart(
        table,
        files.sweep_chart,
        metric=units.pct_name(metric),
        metric_title=f"{template.metric_title} (block {stores.block})",
        random_weights=stores.random_weights,
    )
    write_epochs(
        sweep,
        files,
        template.epoch_metric,
        metric_title=template.epoch_metric_title,
        best_slug=member.slug,
        random_weights=stores.random_weights,
    )
    template.figures(run, results, best, member=member, tables=tables, best_metrics=best_metrics)
    t3 = time.perf_counter()
    return {
        "probe": kind,
        "out": str(files.dir),
        "best": meta["member"],
        "metrics": best_metrics,
        "selected_on": selection["on"],
        f"selection_{metric}": selection[f"best_selection_{metric}"],
        f"val_{metric}": selection[f"best_val_{metric}"],
        **template.summary(run),
        "n_members": len(members),
        "random_weights": stores.random_weights,
        "device": device_name,
        "threads": threads,
        "seconds": {**meta["seconds"], "outputs": round(t3 - t2, 2)},
    }


# ---- the shared steps ------------------------------------------------------------------------


def probe_setup(cfg: Config, kind: str, out_dir: Path | None, ctx=None):
    """What every probe run starts with: its config section, threads, device, the train/val
    stores (checked) and the files it writes (:class:`pipeline.layout.ProbeFiles`, in ``out_dir``
    when given, else the layout's folder). ``kind``: a name in pipeline.probe_kinds.PROBE_KINDS;
    ``ctx``: the step's RunContext (default: one started here)."""
    pc = probe_section(cfg, kind)
    if pc is None:
        raise ConfigError(f"{cfg.source}: key probes/{kind}: missing; the {kind} probe needs it (cache, layer, sweep)")
    ctx = ctx or RunContext.start(cfg)
    threads, device = ctx.threads, ctx.device
    task = PROBE_KINDS[kind].task
    stores = open_probe_stores(cfg, pc.cache, layer=pc.layer, task=task, n_classes=pc.n_classes, key=f"probes/{kind}")
    return (
        pc,
        threads,
        device,
        stores,
        ProbeFiles(Path(out_dir) if out_dir is not None else probe_dir_of(cfg, kind, pc.cache), kind),
    )


def best_meta(
    kind: str,
    pc,
    stores: ProbeStores,
    norm: FinalNorm,
    members,
    best: int,
    metrics: dict,
    *,
    selected_by: str,
    device_name: str,
    threads: int,
    seconds: dict,
    **extra,
) -> dict:
    """The ``best.json`` record every probe kind writes: member, metrics, inputs and
    provenance, then ``extra`` in the order given."""
    member = members[best]
    return {
        "probe": kind,
        "member": {"index": best, "lr": member.lr, "weight_decay": member.weight_decay},
        "metrics": metrics,
        "selected_by": selected_by,
        "layer": pc.layer,
        "block": stores.block,
        "n_classes": stores.n_classes,
        "class_names": list(stores.class_names),
        "random_weights": stores.random_weights,
        "model": {
            k: norm.provenance.get(k) for k in ("family", "source", "revision", "weights_sha256", "random_weights")
        }
        | {"name": pc.cache.model},
        "dataset": pc.cache.dataset,
        "stores": {"train": store_record(stores.train), "val": store_record(stores.val)},
        "probe_config": to_jsonable(pc),
        "device": device_name,
        "threads": threads,
        "seconds": seconds,
        "package_version": pipeline.__version__,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **extra,
    }


def sweep_with_best(
    members: Sequence[ProbeMember], rows: list[dict], metric: str, *, tie_break: str | None = None, **columns
) -> tuple[pd.DataFrame, int]:
    """The sweep table (one row per member: ``sweep_table`` of ``rows``, then the constant
    ``columns`` in the order given, then ``best``) and the best member: the highest ``metric``;
    members that tie on it go to the lowest ``tie_break`` (the held-out loss), then the first in
    the sweep (:func:`pipeline.probes.linear.best_member`)."""
    table = sweep_table(members, rows)
    for name, value in columns.items():
        table[name] = value
    best = best_member(table, metric, tie_break=tie_break)
    table["best"] = table["member"] == best
    return table, best


def n_held_out(n: int, fraction: float, min_images: int) -> int:
    """How many of ``n`` train images are held out to choose the best member: ``fraction`` of
    them, at least ``min_images`` (a small held-out part ties and is noisy), at most half (the
    rest is what the probe learns from), and at least 1; 0 when ``fraction`` is 0."""
    if fraction <= 0:
        return 0
    return max(1, min(n // 2, max(min_images, round(fraction * n))))


def selection_record(pc, metric: str, best: Mapping[str, float], image_ids: Sequence[str]) -> dict:
    """``best.json``'s ``selection``: where the best member was chosen (``on``: the held-out
    train images ``image_ids``, or val when none are held out), and its ``selection_<metric>``
    and val ``<metric>`` from ``best`` (its sweep row, fractions)."""
    n = len(image_ids)
    where = (
        "val (selection_fraction 0: saev's choice, optimistic)"
        if not n
        else (
            f"{n} held-out train images (selection_fraction {pc.selection_fraction:g}, "
            f"selection_min_images {pc.selection_min_images}, seed {pc.selection_seed})"
        )
    )
    return {
        "metric": metric,
        "on": where,
        "fraction": pc.selection_fraction,
        "min_images": pc.selection_min_images,
        "seed": pc.selection_seed,
        "n_images": n,
        f"best_selection_{metric}": float(best[f"selection_{metric}"]),
        f"best_val_{metric}": float(best[metric]),
        "image_ids": list(image_ids),
    }


def write_sweep_csv(table: pd.DataFrame, metric_names: Iterable[str], files: ProbeFiles) -> pd.DataFrame:
    """Writes ``sweep.csv``: ``table`` with every metric but the losses in percent
    (:mod:`pipeline.units`); returns that table (creating the probe's folder)."""
    table = units.to_pct(table, [k for k in metric_names if not k.endswith("loss")])
    files.dir.mkdir(parents=True, exist_ok=True)
    atomic.write_csv(table, files.sweep_csv, index=False)
    return table


def write_epochs(
    sweep: ProbeSweep, files: ProbeFiles, metric: str, *, metric_title: str, best_slug: str, random_weights: bool
) -> None:
    """Writes ``epochs.csv`` (the sweep's epoch history, ``metric`` in percent) and the
    ``epochs`` chart (``metric`` per epoch, one line per member)."""
    epoch_rows = units.to_pct(epoch_table(sweep), [metric])
    atomic.write_csv(epoch_rows, files.epochs_csv, index=False)
    figures.epoch_chart(
        epoch_rows,
        files.epochs_chart,
        metric=units.pct_name(metric),
        metric_title=metric_title,
        best_slug=best_slug,
        random_weights=random_weights,
    )
