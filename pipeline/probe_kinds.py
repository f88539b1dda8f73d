"""The probe-kind registry: what a probe kind is, and every kind the pipeline knows.

A kind is one :class:`ProbeKind` record in :data:`PROBE_KINDS`, which says everything
declarative about it (its config section's dataclass and JSON-schema node, its dataset task,
its files, its help), plus the module that fits it (``run``: ``"module:function"``, imported
only when the step runs, so this module needs no torch, and it lives outside
``pipeline/probes/``, whose ``__init__`` imports torch). Everything that used to switch on
``seg`` / ``cls`` reads this table when it runs, so a kind added to it (even at run time, as
``tests/test_probe_kinds.py`` does) is everywhere:

* :mod:`pipeline.config` — ``probes.<kind>`` in the schema it validates with (``schema``,
  merged into ``probes.properties``), the section parsed into ``Config.probes[<kind>]``
  (``section``), its cache checked against ``task``;
* :mod:`pipeline.stages` — one ``probe-<kind>`` step per kind (CLI sub-command, provenance
  keys ``probes.<kind>``, outputs, resources);
* :mod:`pipeline.layout` — the kind's folder ``<results>/probes/<kind>/<model>/<dataset>/`` and its
  file list (the shared probe files plus ``files`` below);
* :mod:`pipeline.probes.template` (``probe_setup``: section, task, store checks; ``run_probe``);
* :mod:`pipeline.manipulate` (the probe that reads the SAE cache's task);
* ``workflow/rules/probe.smk`` / ``common.smk`` — one ``probe_<kind>`` rule per configured kind;
* :mod:`pipeline.plan` ``check_plan`` — each configured kind's layer is cached.

A section dataclass takes every default from its kind's ``schema`` (:func:`default`), as the
other sections take theirs from the schema file (``tests/test_config_defaults.py`` checks both).

Reads nothing; writes nothing.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.config_schema import default, load_yaml

if TYPE_CHECKING:  # annotations only: pipeline.config imports this module
    from pipeline.config import CacheRef, Config


@dataclass(frozen=True, eq=False)  # eq=False: hashed by identity (pipeline.stages caches a stage per record)
class ProbeKind:
    name: str  # "seg": the config key probes.<name>, the folder probes/<name>/, the step probe-<name>
    task: str  # the dataset task its cache must have: "segmentation" | "classification"
    section: type  # the dataclass of its config section probes.<name> (a `cache` key becomes a CacheRef)
    # the JSON-schema node of probes.<name> (keys, checks, defaults; `$ref`s into the schema file's $defs)
    schema: dict[str, Any]
    run: str  # "module:function(cfg, *, out_dir, progress, ctx) -> dict" that fits the sweep and writes its files
    files: tuple[str, ...]  # file names it writes beside the shared probe files (layout.PROBE_COMMON_FILES)
    help: str  # one line for `python -m pipeline --help`
    reads: str  # what it reads of the cache, for the step's description

    @property
    def step(self) -> str:
        return f"probe-{self.name}"

    @property
    def rule(self) -> str:
        return f"probe_{self.name}"

    @property
    def key(self) -> str:
        return f"probes/{self.name}"


# ---------------------------------------------------------------------------- seg

SEG_SCHEMA: dict[str, Any] = load_yaml("""
type: object
additionalProperties: false
required: [cache]
properties:
  cache: {$ref: "#/$defs/cache_ref"}
  layer: {type: integer, default: -1, description: the cached block whose output (after the final norm) the probe reads}
  n_classes: {$ref: "#/$defs/positive_int", description: "optional check: must equal the cache's class count (incl. 0 = other)"}
  lrs: {$ref: "#/$defs/number_list", default: [3.0e-5, 1.0e-4, 3.0e-4, 1.0e-3, 3.0e-3, 1.0e-2]}
  weight_decays: {$ref: "#/$defs/number_list", default: [1.0e-1, 1.0e-3, 1.0e-5]}
  epochs: {$ref: "#/$defs/positive_int", default: 10}
  batch_size: {$ref: "#/$defs/positive_int", default: 1024}
  shuffle_buffer: {$ref: "#/$defs/positive_int", default: 65536, description: patch tokens held for shuffling}
  seed: {type: integer, default: 0}
  min_purity:
    type: number
    minimum: 0
    maximum: 1
    default: 0.5
    description: train only on patches whose majority label covers at least this fraction
  train_on_other: {type: boolean, default: false, description: also train on patches labelled 0 (other); the probe then predicts all C classes}
  n_figure_images: {type: integer, minimum: 0, default: 6}
  protocol:
    enum: [ade20k, zero_is_class]
    default: ade20k
    description: >
      ade20k: true label 0 ignored, classes 1..C-1 scored (mmseg reduce_zero_label);
      zero_is_class: label 0 is a class, nothing ignored, all C classes scored (needs train_on_other).
  selection_fraction: {$ref: "#/$defs/selection_fraction"}
  selection_min_images: {$ref: "#/$defs/selection_min_images"}
  selection_seed: {type: integer, default: 0, description: seed of the held-out selection images}
""")


@dataclass(frozen=True)
class SegProbeConfig:
    cache: CacheRef
    layer: int = default("layer", SEG_SCHEMA)
    n_classes: int | None = None
    shuffle_buffer: int = default("shuffle_buffer", SEG_SCHEMA)
    seed: int = default("seed", SEG_SCHEMA)
    lrs: tuple[float, ...] = default("lrs", SEG_SCHEMA)
    weight_decays: tuple[float, ...] = default("weight_decays", SEG_SCHEMA)
    epochs: int = default("epochs", SEG_SCHEMA)
    batch_size: int = default("batch_size", SEG_SCHEMA)
    min_purity: float = default("min_purity", SEG_SCHEMA)
    train_on_other: bool = default("train_on_other", SEG_SCHEMA)
    n_figure_images: int = default("n_figure_images", SEG_SCHEMA)
    protocol: str = default("protocol", SEG_SCHEMA)  # ade20k | zero_is_class (pipeline.metrics.SEG_PROTOCOLS)
    # train images held out to choose the best member (0: choose on val, as saev)
    selection_fraction: float = default("selection_fraction", SEG_SCHEMA)
    selection_min_images: int = default("selection_min_images", SEG_SCHEMA)
    selection_seed: int = default("selection_seed", SEG_SCHEMA)


# ---------------------------------------------------------------------------- cls

CLS_SCHEMA: dict[str, Any] = load_yaml("""
type: object
additionalProperties: false
required: [cache]
properties:
  cache: {$ref: "#/$defs/cache_ref"}
  layer: {type: integer, default: -1}
  n_classes: {$ref: "#/$defs/positive_int", description: "optional check: must equal the cache's class count"}
  lrs: {$ref: "#/$defs/number_list", default: [3.0e-5, 1.0e-4, 3.0e-4, 1.0e-3, 3.0e-3, 1.0e-2]}
  weight_decays: {$ref: "#/$defs/number_list", default: [1.0e-1, 1.0e-3, 1.0e-5]}
  epochs: {$ref: "#/$defs/positive_int", default: 50}
  batch_size: {$ref: "#/$defs/positive_int", default: 256}
  seed: {type: integer, default: 0}
  selection_fraction: {$ref: "#/$defs/selection_fraction"}
  selection_min_images: {$ref: "#/$defs/selection_min_images"}
  selection_seed: {type: integer, default: 0, description: seed of the held-out selection images}
""")


@dataclass(frozen=True)
class ClsProbeConfig:
    cache: CacheRef
    layer: int = default("layer", CLS_SCHEMA)
    n_classes: int | None = None
    seed: int = default("seed", CLS_SCHEMA)
    lrs: tuple[float, ...] = default("lrs", CLS_SCHEMA)
    weight_decays: tuple[float, ...] = default("weight_decays", CLS_SCHEMA)
    epochs: int = default("epochs", CLS_SCHEMA)
    batch_size: int = default("batch_size", CLS_SCHEMA)
    # train images held out to choose the best member (0: choose on val, as saev)
    selection_fraction: float = default("selection_fraction", CLS_SCHEMA)
    selection_min_images: int = default("selection_min_images", CLS_SCHEMA)
    selection_seed: int = default("selection_seed", CLS_SCHEMA)


# ---------------------------------------------------------------------------- the registry

PROBE_KINDS: dict[str, ProbeKind] = {
    "seg": ProbeKind(
        "seg",
        "segmentation",
        SegProbeConfig,
        SEG_SCHEMA,
        "pipeline.probes.seg:run_seg_probe",
        files=("per_class_iou.csv", "per_class_iou.html", "per_class_iou.png", "per_class_iou.svg", "examples.png"),
        help="semantic-segmentation probe on cached patch tokens (config: probes.seg)",
        reads="patch tokens",
    ),
    "cls": ProbeKind(
        "cls",
        "classification",
        ClsProbeConfig,
        CLS_SCHEMA,
        "pipeline.probes.cls:run_cls_probe",
        files=("per_class_accuracy.csv", "confusion.html", "confusion.png", "confusion.svg"),
        help="image-classification probe on cached CLS tokens (config: probes.cls)",
        reads="image vectors (CLS token, or the mean of patches)",
    ),
}


def probe_section(cfg: Config, kind: str) -> Any:
    """The config section of a probe kind (None when the config has none)."""
    return cfg.probes.get(kind)


def kind_for_task(task: str) -> ProbeKind:
    """The probe kind that reads a dataset of this task (manipulate and quantify use it)."""
    for pk in PROBE_KINDS.values():
        if pk.task == task:
            return pk
    raise KeyError(f"no probe kind for task {task!r}")


def configured(cfg: Config) -> list[ProbeKind]:
    """The kinds the config has a section for, in registry order."""
    return [pk for pk in PROBE_KINDS.values() if probe_section(cfg, pk.name) is not None]


def run_kind(kind: str, cfg: Config, **kwargs) -> dict:
    """Import the kind's module and run its step."""
    module, func = PROBE_KINDS[kind].run.split(":")
    return getattr(importlib.import_module(module), func)(cfg, **kwargs)
