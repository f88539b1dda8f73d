"""The stage registry: every ``python -m pipeline STEP``, declared once.

Each :class:`Stage` says its name, the config section it needs, the config keys it reads and
the upstream stages whose outputs it reads (:mod:`pipeline.provenance` hashes and checks
them: ``provenance.STEPS`` is this table), the JSON that records its provenance, its outputs
(asked of :mod:`pipeline.layout`), its resources (threads from the config or one, a GPU or
not), its front end (the ``pipeline.commands`` module whose ``add_parser`` builds the
sub-command's arguments) and what it runs (``target``: the ``run(ctx, args)`` of the stage's
own module, called by :meth:`Stage.run` with the started :class:`pipeline.context.RunContext`
and the parsed arguments).

The stage modules: one per step in this package (``demo_data``, ``demo_model``, ``extract``,
``finalize``, ``verify``, ``prepare``, ``stats``, ``probe`` (every probe kind's), ``dimred``,
``class_f1``, ``propose``, ``quantify``, ``manipulate``), the SAE steps' in
:mod:`pipeline.sae.stages` beside the token streams they share, saev's shard import and
export in :mod:`pipeline.interop` beside the shard format. Each reads the parsed
arguments and ``ctx.cfg``, imports its work module when called (so ``--help``, planning and a
config error import no torch) and returns the JSON summary ``__main__`` prints.

Who reads it: ``pipeline/__main__.py`` (the sub-commands: parse, load the config, check
provenance, start the run context with :func:`rule_threads`, ``stage.run(ctx, args)``),
``pipeline/provenance.py`` (keys,
upstream, records), ``workflow/rules/common.smk`` (a rule's outputs, threads and GPU resource via
:func:`rule_outputs`, :func:`rule_threads`, :func:`rule_resources`). Probe stages come from the
probe-kind registry (:mod:`pipeline.probe_kinds`), one per kind, read each time the table is used.

Reads the config only; importing this package imports no stage module and no torch.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from pipeline import layout
from pipeline.config import SPLITS, CacheRef, Config, ConfigError, require_sae, sae_is_imported, sae_train_ref
from pipeline.probe_kinds import PROBE_KINDS, ProbeKind, kind_for_task, probe_section

Keys = dict[str, str]
Upstream = list[tuple[str, Keys]]


@dataclass(frozen=True)
class Stage:
    name: str  # python -m pipeline NAME (the rule runs exactly this)
    cli: str  # module defining add_parser(subparsers) for this step (its arguments only)
    target: str  # "module:function(ctx, args) -> dict" that does the step
    reads: tuple[
        str, ...
    ] = ()  # dotted config keys; "{model}", "{dataset}", "{split}", "{example}" filled from the keys
    upstream: Callable[[Config, Keys], Upstream] = lambda cfg, keys: []
    output: Callable[[Config, Keys], Path] | None = (
        None  # the JSON holding the step's provenance record (None: a store / none)
    )
    # config sections that must be set, YAML spelling ("sae", "probes.seg"); else the step itself reports the missing section
    needs: tuple[str, ...] = ()
    section: str | None = None  # the config section it is configured by (YAML spelling), for docs and --help
    threads: str = "config"  # "config": the config's `threads` (the step caps torch there); "one": a single CPU
    gpu: bool = False  # the rule asks for `resources: gpu=1`
    workflow: bool = True  # run by a Snakemake rule (False: a hand-run tool such as prepare)
    rule_name: str | None = None  # its Snakemake rule, where not the name with "_" for "-"

    @property
    def rule(self) -> str:
        """The Snakemake rule that runs the step (``workflow/rules/*.smk``)."""
        return self.rule_name or self.name.replace("-", "_")

    def run(self, ctx, args) -> object:
        """Do the step: ``target`` imported now (so --help imports no torch), called with the
        started RunContext (None for a step without a config: prepare) and the parsed args."""
        module, func = self.target.split(":")
        return getattr(importlib.import_module(module), func)(ctx, args)

    def outputs(self, cfg: Config, **keys) -> layout.Outputs:
        """What the step writes (pipeline.layout owns it)."""
        return layout.step_outputs(cfg, self.name, **keys)

    def configured(self, cfg: Config) -> bool:
        """Whether the config has every section the step needs."""
        return all(_section(cfg, name) is not None for name in self.needs)


def _section(cfg: Config, name: str) -> object:
    """The config section ``name`` in YAML spelling: ``sae``, ``probes.seg``."""
    kind = name.removeprefix("probes.")
    return probe_section(cfg, kind) if kind != name else getattr(cfg, name)


# ---------------------------------------------------------------------------- upstream


def _ref(ref: CacheRef, split: str) -> Keys:
    return {"model": ref.model, "dataset": ref.dataset, "split": split}


def _demo(cfg: Config, keys: Keys) -> Upstream:
    """A demo dataset / model is made by a step too: its keys belong to the extraction's."""
    up = []
    if keys["dataset"] in cfg.demo.get("datasets", {}):
        up.append(("demo-data", {"dataset": keys["dataset"]}))
    if keys["model"] in cfg.demo.get("models", {}):
        up.append(("demo-model", {"model": keys["model"]}))
    return up


def _stores(ref: CacheRef, splits: tuple[str, ...] = SPLITS) -> Upstream:
    return [("extract", _ref(ref, split)) for split in splits]


def _sae(cfg: Config) -> CacheRef:
    return require_sae(cfg).cache


def _dimred(cfg: Config) -> CacheRef:
    if cfg.dimred is None:
        raise ConfigError(f"{cfg.source}: key dimred: missing")
    return cfg.dimred.cache


def _sae_train_upstream(cfg: Config, keys: Keys) -> Upstream:
    """Training reads its train cache's stores + stats; an imported checkpoint reads sae.cache's train store."""
    sc = require_sae(cfg)
    if sae_is_imported(sc):
        return _stores(sc.cache, ("train",))
    ref = sae_train_ref(sc)
    return [*_stores(ref), ("stats", _ref(ref, "train"))]


def _manipulate_upstream(cfg: Config, keys: Keys) -> Upstream:
    up = [*_stores(_sae(cfg)), ("sae-train", {}), ("sae-latents", {})]
    kind = kind_for_task(cfg.dataset(_sae(cfg).dataset).task)
    if probe_section(cfg, kind.name) is not None:  # else manipulate reports it
        up.append((kind.step, {}))
    if cfg.quantify is not None and (cfg.manipulate is None or cfg.manipulate.rank_by != "activation"):
        up.append(("class-f1", {}))
    return up


# ---------------------------------------------------------------------------- keys

# What a store's config hash covers (pipeline.extract.layout_and_attrs builds exactly these
# entries) and the config keys each entry comes from. `images_sha256` is the split's image ids,
# which the dataset's split keys decide; `model` adds the weights' sha256, read when loading.
STORE_HASHED_KEYS: dict[str, tuple[str, ...]] = {
    "model": ("models.{model}",),
    "preprocess": ("models.{model}.preprocess",),
    "layers": ("extract.layers",),
    "dtype": ("extract.dtype",),
    "forward_dtype": ("extract.forward_dtype",),
    "chunk_images": ("extract.chunk_images",),
    "compression": ("extract.compression",),
    "shard_images": ("extract.shard_images",),
    "decode": ("extract.decode",),
    "dataset": (
        "datasets.{dataset}.kind",
        "datasets.{dataset}.root",
        "datasets.{dataset}.splits.{split}",
        "datasets.{dataset}.class_list",
    ),
    "images_sha256": ("datasets.{dataset}.val_fraction", "datasets.{dataset}.split_seed"),
}
# The extraction's keys: those that change a store's numbers or layout (the store's own hash,
# above), and on_bad_image (a store made with `skip` has bad rows one made with `error` lacks);
# not parts, batch_size or num_workers.
EXTRACT_KEYS = tuple(dict.fromkeys(k for keys in STORE_HASHED_KEYS.values() for k in keys)) + ("extract.on_bad_image",)
SAE_TRAIN_KEYS = tuple(
    f"sae.{k}"
    for k in (
        "cache",
        "layer",
        "tokens",
        "n_tokens",
        "batch_size",
        "lrs",
        "sparsity_coeffs",
        "exp_factors",
        "kinds",
        "lr_warmup_steps",
        "sparsity_warmup_steps",
        "max_l0",
        "seed",
        "shuffle_buffer",
        "source",
        "token_source",
    )
)
QUANTIFY_KEYS = tuple(
    f"quantify.{k}"
    for k in (
        "scale",
        "methods",
        "thresholds",
        "max_firing_fraction",
        "manual",
        "batch_size",
        "seed",
    )
)


# ---------------------------------------------------------------------------- the table


@functools.cache  # one Stage per record (ProbeKind hashes by identity)
def _probe_stage(pk: ProbeKind) -> Stage:
    kind = pk.name
    return Stage(
        pk.step,
        "pipeline.commands.probe",
        "pipeline.stages.probe:run",
        (f"probes.{kind}",),
        lambda cfg, k: _stores(probe_section(cfg, kind).cache),
        lambda cfg, k: layout.probe_files_of(cfg, kind).best_json,
        needs=(f"probes.{kind}",),
        section=f"probes.{kind}",
        gpu=True,
        rule_name=pk.rule,
    )


_SAE = ("sae",)
_BEFORE_PROBES: dict[str, Stage] = {
    "demo-data": Stage(
        "demo-data",
        "pipeline.commands.demo",
        "pipeline.stages.demo_data:run",
        ("demo.seed", "demo.datasets.{dataset}"),
        threads="one",
    ),
    "demo-model": Stage(
        "demo-model",
        "pipeline.commands.demo",
        "pipeline.stages.demo_model:run",
        ("demo.seed", "demo.models.{model}"),
        threads="one",
    ),
    "extract": Stage(
        "extract",
        "pipeline.commands.extract",
        "pipeline.stages.extract:run",
        EXTRACT_KEYS,
        _demo,
        section="extract",
        gpu=True,
        rule_name="extract_part",  # one job per part of a split (extract.parts)
    ),
    "finalize": Stage(
        "finalize",
        "pipeline.commands.extract",
        "pipeline.stages.finalize:run",
        (),
        lambda cfg, k: [("extract", k)],
        threads="one",
    ),
    "prepare": Stage("prepare", "pipeline.prepare", "pipeline.stages.prepare:run", workflow=False),
    "verify": Stage("verify", "pipeline.commands.extract", "pipeline.stages.verify:run", workflow=False),
    "stats": Stage(
        "stats",
        "pipeline.commands.sae",
        "pipeline.stages.stats:run",
        (),
        lambda cfg, k: [("extract", k)],
        lambda cfg, k: layout.stats_path(cfg, CacheRef(k["model"], k["dataset"]), k["split"]),
    ),
    "sae-train": Stage(
        "sae-train",
        "pipeline.commands.sae",
        "pipeline.sae.stages.train:run",
        SAE_TRAIN_KEYS,
        _sae_train_upstream,
        lambda cfg, k: layout.sae_files(cfg).chosen_json,
        _SAE,
        "sae",
        gpu=True,
    ),
    "sae-latents": Stage(
        "sae-latents",
        "pipeline.commands.sae",
        "pipeline.sae.stages.latents:run",
        ("sae.top_k", "sae.log_freq_range", "sae.log_value_range"),
        lambda cfg, k: [*_stores(_sae(cfg), ("train",)), ("sae-train", {})],
        lambda cfg, k: layout.latents_json(cfg),
        _SAE,
        "sae",
        gpu=True,
    ),
    "sae-gallery": Stage(
        "sae-gallery",
        "pipeline.commands.sae",
        "pipeline.sae.stages.gallery:run",
        ("sae.gallery_latents",),
        lambda cfg, k: [*_stores(_sae(cfg), ("train",)), ("sae-latents", {})],
        lambda cfg, k: layout.sae_files(cfg).gallery_selection,
        _SAE,
        "sae",
    ),
    "export-sae": Stage("export-sae", "pipeline.commands.sae", "pipeline.sae.stages.export:run", workflow=False),
    # import-saev: also the import_saev rule's command for a cache with `saev_shards` (workflow/rules/
    # interop.smk; its sentinel: layout.import_sentinel); workflow=False as the demo config imports none
    "import-saev": Stage(
        "import-saev", "pipeline.commands.interop", "pipeline.interop.import_saev:run", workflow=False
    ),
    "export-saev": Stage(
        "export-saev", "pipeline.commands.interop", "pipeline.interop.export_saev:run", workflow=False
    ),
}
_AFTER_PROBES: dict[str, Stage] = {
    "dimred": Stage(
        "dimred",
        "pipeline.commands.dimred",
        "pipeline.stages.dimred:run",
        ("dimred",),
        lambda cfg, k: _stores(_dimred(cfg)),
        lambda cfg, k: layout.dimred_files_of(cfg).projections.with_suffix(".json"),
        ("dimred",),
        "dimred",
        gpu=True,
    ),
    "class-f1": Stage(
        "class-f1",
        "pipeline.commands.quantify",
        "pipeline.stages.class_f1:run",
        ("quantify.thresholds",),
        lambda cfg, k: [*_stores(_sae(cfg), ("train",)), ("sae-train", {})],
        lambda cfg, k: layout.sae_files(cfg).class_f1_json,
        _SAE,
        "quantify",
        gpu=True,
    ),
    "propose": Stage(
        "propose",
        "pipeline.commands.quantify",
        "pipeline.stages.propose:run",
        ("quantify.max_firing_fraction", "quantify.n_proposals"),
        lambda cfg, k: [*_stores(_sae(cfg), ("train",)), ("sae-latents", {}), ("class-f1", {})],
        needs=_SAE,
        section="quantify",
        threads="one",
    ),
    "quantify": Stage(
        "quantify",
        "pipeline.commands.quantify",
        "pipeline.stages.quantify:run",
        QUANTIFY_KEYS,
        lambda cfg, k: [
            *_stores(_sae(cfg), ("val",)),
            ("sae-train", {}),
            ("sae-latents", {}),
            ("class-f1", {}),
            ("probe-seg", {}),
        ],
        needs=("sae", "probes.seg"),
        section="quantify",
        gpu=True,
    ),
    "manipulate": Stage(
        "manipulate",
        "pipeline.commands.manipulate",
        "pipeline.stages.manipulate:run",
        ("manipulate.n_top_latents", "manipulate.n_top_classes", "manipulate.rank_by", "manipulate.examples.{example}"),
        _manipulate_upstream,
        needs=_SAE,
        section="manipulate",
    ),
}


class _Stages(Mapping[str, Stage]):
    """The table: the fixed stages and one ``probe-<kind>`` stage per kind of the probe-kind
    registry, read from the registry on each use (so a kind registered after this module is
    imported is a step too), in a fixed order (the probes after the SAE stages)."""

    def _table(self) -> dict[str, Stage]:
        probes = {pk.step: _probe_stage(pk) for pk in PROBE_KINDS.values()}
        return {**_BEFORE_PROBES, **probes, **_AFTER_PROBES}

    def __getitem__(self, step: str) -> Stage:
        return self._table()[step]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table())

    def __len__(self) -> int:
        return len(self._table())


STAGES: Mapping[str, Stage] = _Stages()


# ---------------------------------------------------------------------------- for the rules


def rule_outputs(cfg: Config, step: str, **keys) -> list[Path]:
    """The files and folders a step's rule declares (common.smk adds report flags and directory())."""
    return STAGES[step].outputs(cfg, **keys).declared()


# CPUs a rule asks of a cluster (SLURM's --cpus-per-task) under `threads: auto`, unless
# snakemake's --max-threads says fewer: the planning (login) node's count says nothing of the
# compute nodes', and inside the job `auto` counts the CPUs SLURM gave it.
REMOTE_AUTO_THREADS = 8


def rule_threads(cfg: Config, step: str, *, remote: bool = False, max_threads: int | None = None) -> int:
    """The threads of ``step``'s rule or job: 1 for the light steps, else the config's
    ``threads``; ``threads: auto`` under a cluster executor (``remote``) asks for
    :data:`REMOTE_AUTO_THREADS` (or ``max_threads``, snakemake's --max-threads, if fewer)."""
    if STAGES[step].threads == "one":
        return 1
    if remote and cfg.threads_auto:
        return min(REMOTE_AUTO_THREADS, max_threads or REMOTE_AUTO_THREADS)
    return cfg.threads


def gpu_rules() -> list[str]:
    """The workflow's rules that ask for a GPU (``resources: gpu=1``), from the stage registry
    (a registered probe kind's rule among them): the SLURM profiles give each one the GPU
    partition, GPU type, memory and time (``slurm/config.yaml``'s ``set-resources``)."""
    return sorted(stage.rule for stage in STAGES.values() if stage.gpu and stage.workflow)


def rule_resources(step: str) -> dict[str, int]:
    """``resources:`` of the step's rule: ``gpu=1`` for the GPU steps (the SLURM profiles read it)."""
    return {"gpu": 1} if STAGES[step].gpu else {}
