"""The probe-kind registry: what a probe kind is, and every kind the pipeline knows.

A kind is one :class:`ProbeKind` record in :data:`PROBE_KINDS` plus the module that fits it
(``run``: ``"module:function"``, imported only when the step runs, so this module needs no
torch, and it lives outside ``pipeline/probes/``, whose ``__init__`` imports torch). Everything that used to switch on ``seg`` / ``cls`` reads this table:

* :mod:`pipeline.stages` — one ``probe-<kind>`` step per kind (CLI sub-command, provenance
  keys ``probes.<kind>``, outputs, resources);
* :mod:`pipeline.layout` — the kind's folder ``<results>/probes/<kind>/<model>/<dataset>/`` and its
  file list (the shared probe files plus ``files`` below);
* :mod:`pipeline.probes.features` (``probe_setup``: section, task, store checks);
* :mod:`pipeline.manipulate` (the probe that reads the SAE cache's task);
* ``workflow/rules/probe.smk`` / ``common.smk`` — one ``probe_<kind>`` rule per configured kind;
* :mod:`pipeline.provenance` ``check_plan`` — each configured kind's layer is cached.

Reads nothing; writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.config import Config


@dataclass(frozen=True)
class ProbeKind:
    name: str  # "seg": the config key probes.<name>, the folder probes/<name>/, the step probe-<name>
    task: str  # the dataset task its cache must have: "segmentation" | "classification"
    attr: str  # the Config attribute holding its section (the section's dataclass lives in pipeline.config)
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


PROBE_KINDS: dict[str, ProbeKind] = {
    "seg": ProbeKind(
        "seg",
        "segmentation",
        "seg_probe",
        "pipeline.probes.seg:run_seg_probe",
        files=("per_class_iou.csv", "per_class_iou.html", "per_class_iou.png", "per_class_iou.svg", "examples.png"),
        help="semantic-segmentation probe on cached patch tokens (config: probes.seg)",
        reads="patch tokens",
    ),
    "cls": ProbeKind(
        "cls",
        "classification",
        "cls_probe",
        "pipeline.probes.cls:run_cls_probe",
        files=("per_class_accuracy.csv", "confusion.html", "confusion.png", "confusion.svg"),
        help="image-classification probe on cached CLS tokens (config: probes.cls)",
        reads="image vectors (CLS token, or the mean of patches)",
    ),
}


def probe_section(cfg: Config, kind: str) -> Any:
    """The config section of a probe kind (None when the config has none)."""
    return getattr(cfg, PROBE_KINDS[kind].attr)


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
    import importlib

    module, func = PROBE_KINDS[kind].run.split(":")
    return getattr(importlib.import_module(module), func)(cfg, **kwargs)
